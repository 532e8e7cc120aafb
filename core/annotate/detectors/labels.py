"""Boxes that already exist: a folder of YOLO box labels or a COCO JSON with boxes (what
Ultralytics' `yolo_bbox2segment` segments). The class ids are kept as they are."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..records import AnnotateError, Detections, ImageInfo
from .base import DetectOptions, Detector, file_fingerprint


class LabelsWarning(UserWarning):
    """Some label files or COCO images have no image in the data folder."""


def _check_matches(kind: str, source: Path, label_keys: list[str], image_keys: set[str], data: Path) -> None:
    """Labels must name images of the run: none matching is an error, some not matching a warning."""
    if not label_keys:
        raise AnnotateError(f"{source} holds no box labels ({kind})")
    missing = [k for k in label_keys if k not in image_keys]
    if len(missing) == len(label_keys):
        example = sorted(image_keys)[:1]
        raise AnnotateError(
            f"none of the {len(label_keys)} labelled images of {source} is in {data} (labels for "
            f"{missing[0]!r}{', images like ' + repr(example[0]) if example else ''}): labels without images; "
            "point data at the images these labels describe"
        )
    if missing:
        warnings.warn(f"{len(missing)} of {len(label_keys)} labelled images of {source} are not in {data} "
                      f"(first: {missing[0]!r}); their boxes are not used", LabelsWarning, stacklevel=3)


def read_class_names(folder: Path) -> dict[int, str]:
    """Class names beside YOLO labels: classes.txt in the folder (one name a line), or the
    `names:` of a data.yaml / dataset.yaml in the folder or its parent. Empty when none."""
    for candidate in (folder / "classes.txt", folder.parent / "classes.txt"):
        if candidate.is_file():
            lines = [line.strip() for line in candidate.read_text(encoding="utf-8").splitlines()]
            return {i: name for i, name in enumerate(lines) if name}
    for place in (folder, folder.parent):
        for name in ("data.yaml", "dataset.yaml"):
            candidate = place / name
            if candidate.is_file():
                names = _yaml_names(candidate)
                if names:
                    return names
    return {}


def _yaml_names(path: Path) -> dict[int, str]:
    try:
        import yaml
    except ImportError:  # PyYAML is optional: fall back to the two layouts Ultralytics writes
        return _simple_yaml_names(path.read_text(encoding="utf-8"))
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise AnnotateError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    return {}


def _simple_yaml_names(text: str) -> dict[int, str]:
    inline = re.search(r"^names:\s*\[(.*)\]\s*$", text, flags=re.M)
    if inline:
        return {i: n.strip().strip("'\"") for i, n in enumerate(inline.group(1).split(","))}
    block = re.search(r"^names:\s*\n((?:[ \t]+.*\n?)+)", text, flags=re.M)
    names = {}
    if block:
        for i, line in enumerate(block.group(1).splitlines()):
            item = re.match(r"\s*(?:(\d+)\s*:|-)\s*(.+?)\s*$", line)
            if item:
                names[int(item.group(1)) if item.group(1) else i] = item.group(2).strip("'\"")
    return names


class YoloLabels(Detector):
    """A folder of YOLO label files, `<image stem>.txt`, one box a line: `cls cx cy w h`
    (normalised to [0, 1]), optionally followed by a confidence; a polygon line (`cls x1 y1 x2 y2
    ...`) counts as its bounding box. An image without a label file has no boxes."""

    kind = "YOLO box labels"
    from_labels = True

    def __init__(self, folder: Path, options: DetectOptions) -> None:
        super().__init__(options)
        self.folder = folder.resolve()
        self.names = read_class_names(self.folder)
        with os.scandir(self.folder) as entries:
            self.stems = {Path(e.name).stem for e in entries if e.name.endswith(".txt") and e.name != "classes.txt"}

    def prepare(self, images: list[ImageInfo], root: Path) -> None:
        _check_matches(self.kind, self.folder, sorted(self.stems), {i.stem for i in images}, root)

    def known_ids(self) -> set[int] | None:
        return set(self.names) or None

    def detect(self, image: np.ndarray, info: ImageInfo) -> Detections:
        height, width = image.shape[:2]
        path = self.folder / f"{info.stem}.txt"
        if info.stem not in self.stems or not path.is_file():
            return Detections.empty(self.names)
        boxes, scores, classes = [], [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            values = line.split()
            if not values:
                continue
            try:
                numbers = [float(v) for v in values]
            except ValueError:
                raise AnnotateError(f"{path}:{number}: expected numbers 'cls cx cy w h', "
                                    f"got {line.strip()!r}") from None
            cls, rest = numbers[0], numbers[1:]
            score = 1.0
            if len(rest) in (4, 5):  # a box, maybe with its confidence
                if len(rest) == 5:
                    score = rest[4]
                cx, cy, w, h = rest[:4]
                box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            elif len(rest) >= 6:  # a polygon (x, y pairs), maybe with a confidence
                if len(rest) % 2:
                    score, rest = rest[-1], rest[:-1]
                xy = np.asarray(rest).reshape(-1, 2)
                box = [xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()]
            else:
                raise AnnotateError(f"{path}:{number}: expected 'cls cx cy w h' (5 numbers), got {len(values)}")
            if cls != int(cls) or cls < 0:
                raise AnnotateError(f"{path}:{number}: the class id must be a whole number >= 0, got {values[0]}")
            boxes.append([box[0] * width, box[1] * height, box[2] * width, box[3] * height])
            scores.append(score)
            classes.append(int(cls))
        if not boxes:
            return Detections.empty(self.names)
        return Detections(np.asarray(boxes), np.asarray(scores), np.asarray(classes), self.names)

    def all_ids(self) -> set[int]:
        """Every class id the label files use (reads them all: for checking a class filter when
        the folder names no classes)."""
        ids: set[int] = set()
        for stem in self.stems:
            for line in (self.folder / f"{stem}.txt").read_text(encoding="utf-8").splitlines():
                head = line.split()[:1]
                if head:
                    try:
                        ids.add(int(float(head[0])))
                    except ValueError:
                        pass
        return ids

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "folder": str(self.folder)}


class CocoBoxes(Detector):
    """A COCO JSON (`images`, `annotations` with `bbox` [x, y, w, h] in pixels, `categories`);
    images are matched to the data folder by file name (its path inside the JSON may have
    folders). Category ids are kept as class ids."""

    kind = "COCO boxes"
    from_labels = True

    def __init__(self, path: Path, options: DetectOptions) -> None:
        super().__init__(options)
        self.path = path.resolve()
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise AnnotateError(f"{path} is not a readable JSON file: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
                doc.get("annotations"), list):
            raise AnnotateError(f"{path} is not a COCO detection file: it needs 'images' and 'annotations' lists")
        self.names = {int(c["id"]): str(c.get("name", c["id"])) for c in doc.get("categories") or []}
        id_to_name = {}
        for image in doc["images"]:
            id_to_name[image["id"]] = Path(str(image["file_name"])).name
        self.boxes: dict[str, list[tuple[list[float], int, float]]] = defaultdict(list)
        for ann in doc["annotations"]:
            name = id_to_name.get(ann.get("image_id"))
            bbox = ann.get("bbox")
            if name is None or not bbox or len(bbox) != 4:
                continue
            x, y, w, h = (float(v) for v in bbox)
            box = [x, y, x + w, y + h]
            self.boxes[name].append((box, int(ann.get("category_id", 0)), float(ann.get("score", 1.0))))
        self.image_names = sorted(set(id_to_name.values()))
        self.boxes = dict(self.boxes)

    def prepare(self, images: list[ImageInfo], root: Path) -> None:
        _check_matches(self.kind, self.path, self.image_names, {Path(i.key).name for i in images}, root)

    def detect(self, image: np.ndarray, info: ImageInfo) -> Detections:
        found = self.boxes.get(Path(info.key).name)
        if not found:
            return Detections.empty(self.names)
        boxes, classes, scores = zip(*found)
        return Detections(np.asarray(boxes), np.asarray(scores), np.asarray(classes), self.names)

    def all_ids(self) -> set[int]:
        return {c for found in self.boxes.values() for _, c, _ in found}

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, **file_fingerprint(self.path)}
