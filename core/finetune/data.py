"""Training data for fine-tuning: one record per labelled image, and the readers that make them.

Every reader produces the same records, `LabelledImage` (an image source and its objects) holding
`LabelledObject`s (a mask as COCO RLE, an optional class label, a name for error messages):
COCO instance JSON and YOLO segmentation datasets here; FiftyOne views, Label Studio projects and
raster + vector files in the adapters, which build their records with `object_from_mask`,
`object_from_polygons` and `object_from_rle` so that every source is checked the same way.

Bad data is one `DatasetError` naming the file, image and object: an empty mask, a polygon
outside its image, an image that does not open (or whose size contradicts the labels), a class
filter that matches nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as coco_mask

from ..errors import DatasetError, ImageError
from ..utils.image_io import load_image

ImageSource = Union[str, os.PathLike, np.ndarray, Callable[[], np.ndarray]]

# How far (pixels) a polygon vertex may lie beyond the image border: exports round and place
# vertices on pixel edges (x = width), which is not an error; more than this is another frame.
POLYGON_TOLERANCE = 1.0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class LabelledObject(NamedTuple):
    """One object: its mask (COCO compressed RLE of the image's size), class, and name."""

    mask: dict  # {"size": [h, w], "counts": str}
    label: str | None
    name: str  # how messages name it, e.g. "annotation 17"


@dataclass(frozen=True)
class LabelledImage:
    """An image and the objects labelled in it.

    image: a file path, an HxWx3 uint8 array, or a function returning one (read when needed, so
    that a dataset of thousands of images is not held in memory). name: how messages name the
    image ("train.json: image 3 (a.jpg)"). size: (height, width) when known without reading it.
    """

    image: ImageSource
    objects: tuple[LabelledObject, ...]
    name: str
    size: tuple[int, int] | None = None

    def load(self) -> np.ndarray:
        """The pixels as HxWx3 uint8 RGB; an image that does not open raises DatasetError naming it."""
        try:
            source = self.image() if callable(self.image) else self.image
            array = load_image(source)
        except ImageError as exc:
            raise DatasetError(f"{self.name}: the image does not open: {exc}") from None
        except DatasetError:
            raise
        except Exception as exc:  # a reader's callable failing (network, raster read, ...)
            raise DatasetError(f"{self.name}: the image does not open: {type(exc).__name__}: {exc}") from None
        if self.size is not None and tuple(array.shape[:2]) != tuple(self.size):
            raise DatasetError(
                f"{self.name}: the image is {array.shape[1]}x{array.shape[0]} pixels but its labels are for "
                f"{self.size[1]}x{self.size[0]}"
            )
        for obj in self.objects:
            if tuple(obj.mask["size"]) != tuple(array.shape[:2]):
                height, width = obj.mask["size"]
                raise DatasetError(
                    f"{self.name}, {obj.name}: the mask is {width}x{height} pixels but the image is "
                    f"{array.shape[1]}x{array.shape[0]}"
                )
        return array

    @property
    def labels(self) -> list[str | None]:
        return [obj.label for obj in self.objects]


# -- building objects (shared by every reader, the adapters' included) -------------------------


def object_from_mask(mask: np.ndarray, label: str | None, name: str, where: str) -> LabelledObject:
    """A binary HxW mask -> LabelledObject; an empty mask is a DatasetError naming `where`, `name`."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise DatasetError(f"{where}, {name}: a mask must be 2-D (height x width), got shape {mask.shape}")
    if not mask.any():
        raise DatasetError(f"{where}, {name}: the mask is empty (no pixel set); remove the object or redraw it")
    column_major = np.asfortranarray(mask.astype(np.uint8))[:, :, None]
    rle = coco_mask.encode(column_major)[0]
    return LabelledObject({"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode()},
                          label, name)


def object_from_rle(rle: dict, size: tuple[int, int], label: str | None, name: str, where: str) -> LabelledObject:
    """A COCO RLE (compressed, or uncompressed with a list of counts) of an image of `size` (H, W)."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise DatasetError(f"{where}, {name}: an RLE mask needs 'size' and 'counts', got {str(rle)[:80]}")
    height, width = (int(v) for v in rle["size"])
    if (height, width) != tuple(size):
        raise DatasetError(
            f"{where}, {name}: the RLE mask is {width}x{height} pixels but the image is {size[1]}x{size[0]}"
        )
    counts = rle["counts"]
    try:
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise DatasetError(
                    f"{where}, {name}: the RLE counts add up to {sum(counts)} pixels, not {height}x{width}"
                )
            encoded = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        else:
            encoded = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        area = int(coco_mask.area(encoded))
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{where}, {name}: the RLE mask does not decode ({exc})") from None
    if area == 0:
        raise DatasetError(f"{where}, {name}: the mask is empty (no pixel set); remove the object or redraw it")
    counts = encoded["counts"]
    return LabelledObject(
        {"size": [height, width], "counts": counts.decode() if isinstance(counts, bytes) else counts}, label, name
    )


def object_from_polygons(
    polygons: Sequence[np.ndarray | Sequence[float]],
    size: tuple[int, int],
    label: str | None,
    name: str,
    where: str,
    tolerance: float = POLYGON_TOLERANCE,
) -> LabelledObject:
    """Polygons in pixel coordinates of an image of `size` (H, W): each (K, 2) XY or a flat
    [x0, y0, x1, y1, ...] list, K >= 3; their union is the object's mask (rasterised by
    pycocotools, as COCO's own tools do). A vertex more than `tolerance` px outside the image is
    a DatasetError: the polygon belongs to another image or another coordinate frame."""
    height, width = size
    flat = []
    for number, polygon in enumerate(polygons):
        points = np.asarray(polygon, dtype=np.float64).reshape(-1)
        if points.size % 2 or points.size < 6:
            raise DatasetError(
                f"{where}, {name}: polygon {number} has {points.size} coordinates; a polygon needs x,y pairs "
                "for at least 3 vertices"
            )
        if not np.isfinite(points).all():
            raise DatasetError(f"{where}, {name}: polygon {number} has NaN or infinite coordinates")
        xs, ys = points[0::2], points[1::2]
        low, high = min(xs.min(), ys.min()), max(xs.max() - width, ys.max() - height)
        if low < -tolerance or high > tolerance:
            raise DatasetError(
                f"{where}, {name}: polygon {number} reaches outside the {width}x{height} image (x "
                f"{xs.min():g}..{xs.max():g}, y {ys.min():g}..{ys.max():g}); are its coordinates pixels of this image?"
            )
        flat.append(points.tolist())
    if not flat:
        raise DatasetError(f"{where}, {name}: no polygon given")
    rle = coco_mask.merge(coco_mask.frPyObjects(flat, height, width))
    if int(coco_mask.area(rle)) == 0:
        raise DatasetError(
            f"{where}, {name}: the polygon covers no pixel (zero area); remove the object or redraw it"
        )
    return LabelledObject({"size": [int(height), int(width)], "counts": rle["counts"].decode()}, label, name)


def decode_mask(obj: LabelledObject) -> np.ndarray:
    """The object's mask as HxW bool."""
    rle = {"size": obj.mask["size"], "counts": obj.mask["counts"].encode()}
    return coco_mask.decode(rle).astype(bool)


def mask_box(obj: LabelledObject) -> np.ndarray:
    """The object's tight box [x0, y0, x1, y1] in pixel edges (x1 = last column + 1)."""
    rle = {"size": obj.mask["size"], "counts": obj.mask["counts"].encode()}
    x, y, w, h = coco_mask.toBbox(rle).tolist()
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def select_classes(images: Iterable[LabelledImage], classes: Sequence[str] | None, source: str) -> list[LabelledImage]:
    """Keep only objects whose label is in `classes` (None: all), and only images that keep one.
    A filter that matches nothing is a DatasetError listing the labels there are."""
    images = list(images)
    if classes is None:
        return [image for image in images if image.objects]
    wanted = {str(c) for c in classes}
    kept = []
    for image in images:
        objects = tuple(obj for obj in image.objects if obj.label in wanted)
        if objects:
            kept.append(replace(image, objects=objects))
    if not kept:
        present = sorted({str(obj.label) for image in images for obj in image.objects})
        raise DatasetError(
            f"{source}: no object has class {', '.join(sorted(wanted))}; the classes there are: "
            f"{', '.join(present) if present else '(none)'}"
        )
    return kept


def count_objects(images: Iterable[LabelledImage]) -> int:
    return sum(len(image.objects) for image in images)


# -- image headers ---------------------------------------------------------------------------

# EXIF orientations that swap width and height (load_image turns images upright)
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


def image_size(path: Path, where: str) -> tuple[int, int]:
    """(height, width) of an image file as load_image will return it, from its header only."""
    if not path.is_file():
        raise DatasetError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            orientation = opened.getexif().get(0x0112)
    except UnidentifiedImageError:
        raise DatasetError(f"{where}: the image does not open: {path} is not an image Pillow can read") from None
    except Exception as exc:
        raise DatasetError(f"{where}: the image does not open: {path}: {exc}") from None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return int(height), int(width)


# -- COCO --------------------------------------------------------------------------------------


def read_coco(
    path: str | os.PathLike, images: str | os.PathLike | None = None, classes: Sequence[str] | None = None
) -> list[LabelledImage]:
    """A COCO instance-segmentation JSON -> LabelledImages (images without objects left out).

    Masks are polygons or RLE (compressed or uncompressed); crowd regions (iscrowd = 1) are not
    single objects and are skipped. `file_name` is found relative to `images` when given (also
    by its base name there), else relative to the JSON's folder. `classes`: category names to
    keep. Each image's header is read here, so a missing, unreadable or mis-sized image is an
    error before any work starts.
    """
    path = Path(path)
    source = path.name
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DatasetError(f"COCO file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not a readable COCO JSON file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise DatasetError(f"{path} is not a COCO instance file: it needs 'images' and 'annotations' lists")
    categories = {c.get("id"): str(c.get("name", c.get("id"))) for c in data.get("categories") or []}
    image_dir = Path(images) if images is not None else None

    entries: dict = {}
    for entry in data["images"]:
        image_id = entry.get("id")
        file_name = entry.get("file_name")
        where = f"{source}: image {image_id} ({file_name})"
        if image_id is None or not file_name:
            raise DatasetError(f"{source}: an image entry lacks 'id' or 'file_name': {str(entry)[:120]}")
        file_path = _find_coco_image(file_name, path.parent, image_dir, where)
        size = image_size(file_path, where)
        declared = (entry.get("height"), entry.get("width"))
        if None not in declared and tuple(int(v) for v in declared) != size:
            raise DatasetError(
                f"{where}: the file is {size[1]}x{size[0]} pixels but the JSON says {declared[1]}x{declared[0]}"
            )
        entries[image_id] = (file_path, size, where, [])

    skipped_crowd = 0
    for ann in data["annotations"]:
        ann_id = ann.get("id")
        name = f"annotation {ann_id}"
        image_id = ann.get("image_id")
        if image_id not in entries:
            raise DatasetError(f"{source}, {name}: its image_id {image_id} is not among the images")
        file_path, size, where, objects = entries[image_id]
        if ann.get("iscrowd", 0):
            skipped_crowd += 1
            continue
        label = categories.get(ann.get("category_id"), None if ann.get("category_id") is None else
                               str(ann.get("category_id")))
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, dict):
            objects.append(object_from_rle(segmentation, size, label, name, where))
        elif isinstance(segmentation, list) and segmentation:
            polygons = segmentation if isinstance(segmentation[0], (list, tuple)) else [segmentation]
            objects.append(object_from_polygons(polygons, size, label, name, where))
        else:
            raise DatasetError(
                f"{where}, {name}: no segmentation (only a box?); fine-tuning needs a polygon or RLE mask per object"
            )
    records = [
        LabelledImage(str(file_path), tuple(objects), where, size)
        for file_path, size, where, objects in entries.values()
    ]
    return select_classes(records, classes, str(path))


def _find_coco_image(file_name: str, json_dir: Path, image_dir: Path | None, where: str) -> Path:
    name = Path(file_name)
    candidates = [image_dir / name, image_dir / name.name] if image_dir is not None else [json_dir / name]
    if name.is_absolute():
        candidates.insert(0, name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    hint = "" if image_dir is not None else " (pass the image folder as images= / --images)"
    raise DatasetError(f"{where}: image file not found (tried {tried}){hint}")


# -- YOLO segmentation -------------------------------------------------------------------------


def read_yolo(
    root: str | os.PathLike, split: str | None = None, classes: Sequence[str] | None = None
) -> list[LabelledImage]:
    """A YOLO segmentation dataset -> LabelledImages (images without objects left out).

    `root` is the dataset folder (with `images/` and `labels/`, optionally split into
    `images/<split>/`) or its data YAML (`path`, `train`/`val`, `names`). Label files follow
    Ultralytics' rule: the image path with its last `images` folder replaced by `labels` and the
    suffix `.txt`; each line is `class x1 y1 x2 y2 ...` in coordinates normalised to [0, 1].
    Class names come from the YAML's `names`, else the class numbers are the names.
    """
    root = Path(root)
    names: dict[int, str] = {}
    if root.is_file() and root.suffix.lower() in (".yaml", ".yml"):
        config = _read_yaml(root)
        base = root.parent / str(config.get("path") or ".")
        key = split or "train"
        if key not in config:
            raise DatasetError(f"{root} has no '{key}' entry (it has: {', '.join(map(str, config))})")
        image_dirs = [base / str(entry) for entry in _as_list(config[key])]
        names = _yolo_names(config.get("names"), root)
        source = root.name
    elif root.is_dir():
        image_root = root / "images"
        if not image_root.is_dir():
            raise DatasetError(f"{root} is not a YOLO dataset: it has no images/ folder")
        image_dirs = [image_root / split] if split else [image_root]
        for candidate in sorted(root.glob("*.y*ml")):
            config = _read_yaml(candidate)
            if isinstance(config, dict) and "names" in config:
                names = _yolo_names(config["names"], candidate)
                break
        source = root.name
    else:
        raise DatasetError(f"YOLO dataset not found: {root} (give its folder or its data YAML)")

    records = []
    for image_dir in image_dirs:
        if not image_dir.is_dir():
            raise DatasetError(f"{source}: image folder not found: {image_dir}")
        for image_path in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            label_path = _yolo_label_path(image_path)
            if not label_path.is_file():
                continue  # an image without labels is background: nothing to train on
            where = f"{source}: {image_path.relative_to(image_dir.parent)}"
            size = image_size(image_path, where)
            objects = _read_yolo_labels(label_path, size, names, where)
            records.append(LabelledImage(str(image_path), tuple(objects), where, size))
    if not records:
        raise DatasetError(f"{source}: no image with a label file found under {', '.join(map(str, image_dirs))}")
    return select_classes(records, classes, str(root))


def _yolo_label_path(image_path: Path) -> Path:
    parts = list(image_path.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _read_yolo_labels(label_path: Path, size: tuple[int, int], names: dict[int, str], where: str):
    height, width = size
    objects = []
    try:
        lines = label_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where}: cannot read its label file {label_path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name = f"{label_path.name} line {number}"
        tokens = line.split()
        try:
            class_id = int(float(tokens[0]))
            values = np.array([float(v) for v in tokens[1:]], dtype=np.float64)
        except ValueError:
            raise DatasetError(f"{where}, {name}: not 'class x1 y1 x2 y2 ...' numbers: {line[:80]!r}") from None
        if values.size == 4:
            raise DatasetError(
                f"{where}, {name}: a detection box (class cx cy w h), not a segmentation polygon; fine-tuning "
                "needs polygons"
            )
        xy = values.reshape(-1, 2) * np.array([width, height]) if values.size % 2 == 0 else values
        label = names.get(class_id, str(class_id))
        objects.append(object_from_polygons([xy], size, label, name, where))
    return objects


def _read_yaml(path: Path):
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"{path} is not a readable YAML file: {exc}") from None


def _yolo_names(names, path: Path) -> dict[int, str]:
    if names is None:
        return {}
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, list):
        return {i: str(v) for i, v in enumerate(names)}
    raise DatasetError(f"{path}: 'names' must be a list or a mapping of class number to name")


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# -- any file ----------------------------------------------------------------------------------


def read_dataset(
    path: str | os.PathLike, images: str | os.PathLike | None = None, classes: Sequence[str] | None = None
) -> list[LabelledImage]:
    """A COCO JSON (`.json`) or a YOLO dataset (folder or data YAML) -> LabelledImages."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_coco(path, images, classes)
    if path.is_dir() or path.suffix.lower() in (".yaml", ".yml"):
        return read_yolo(path, classes=classes)
    raise DatasetError(
        f"{path}: expected a COCO instance JSON (.json) or a YOLO segmentation dataset (a folder with images/ and "
        "labels/, or its data YAML)"
    )


def split_validation(
    images: Sequence[LabelledImage], fraction: float, seed: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, validation): a seeded `fraction` of the images (at least one) held out, whole
    images so that no image is seen by both. Needs at least two images."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be between 0 and 1, got {fraction}")
    if len(images) < 2:
        raise DatasetError(
            f"only {len(images)} labelled image: a validation set cannot be split off; give a validation set "
            "(val= / --val) or more images"
        )
    order = np.random.default_rng([seed, 0x5A1]).permutation(len(images))
    count = min(len(images) - 1, max(1, int(round(fraction * len(images)))))
    held = set(order[:count].tolist())
    train = [image for i, image in enumerate(images) if i not in held]
    val = [image for i, image in enumerate(images) if i in held]
    return train, val
