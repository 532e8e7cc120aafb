"""A Label Studio import file: `<output>/tasks.json`, one task per image with one prediction
holding a region per object (brush RLE by default, or polygons), labelled with the class name
and scored with the detector's confidence; and `<output>/label_config.xml`, a labeling config
with those classes for the project to import into.

Label Studio reads local images through its local-files storage: a task's image is
`url_prefix + path relative to document_root` (by default "/data/local-files/?d=" and
$LOCAL_FILES_DOCUMENT_ROOT, else the data folder's parent: start Label Studio with
LOCAL_FILES_SERVING_ENABLED=true and that LOCAL_FILES_DOCUMENT_ROOT, and add a Local Files
storage for the images folder to the project). Give url_prefix (e.g. an HTTP server's address)
to point elsewhere: then a task's image is url_prefix + the file name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from ...utils.files import atomic_output
from ...utils.label_studio_format import brush_rle, mean_score, percent_points, region
from ...utils.outlines import capped_outlines
from ..records import AnnotateError, ImageInfo, ObjectMask, ShapeOptions
from ..shapes import fill_holes
from .base import JournalWriter, RunInfo, json_items

DEFAULT_URL_PREFIX = "/data/local-files/?d="
# Label Studio's editor slows to a crawl on polygons of tens of thousands of points
# (see samkit.utils.outlines.capped_outlines): the same caps as the Label Studio adapter's defaults
# (format options max_polygons, max_polygon_points: the largest pieces first; a ragged mask is
# simplified more coarsely).
MAX_POLYGONS = 20
MAX_POLYGON_POINTS = 2000


@dataclass(frozen=True)
class LabelStudioEncoder:
    shape: ShapeOptions
    from_name: str
    to_name: str
    max_polygons: int = MAX_POLYGONS
    max_polygon_points: int = MAX_POLYGON_POINTS

    def __call__(self, image: ImageInfo, objects: list[ObjectMask], names: dict[int, str]) -> list[dict[str, Any]]:
        regions = []
        for obj in objects:
            label = names.get(obj.class_id, str(obj.class_id))
            if self.shape.mask_format == "rle":
                value = {"format": "rle", "rle": brush_rle(obj.full(image.height, image.width)),
                         "brushlabels": [label]}
                regions.append(region(self.from_name, self.to_name, "brushlabels", image.width, image.height, value,
                                      obj.score))
                continue
            crop = obj.crop if self.shape.holes else fill_holes(obj.crop)
            found, _, _ = capped_outlines(crop, self.shape.tolerance, 0, self.max_polygons, self.max_polygon_points)
            for ring in found[: self.max_polygons]:
                value = {"points": percent_points(ring + obj.origin, image.width, image.height), "closed": True,
                         "polygonlabels": [label]}
                regions.append(region(self.from_name, self.to_name, "polygonlabels", image.width, image.height,
                                      value, obj.score))
        return regions


class LabelStudioWriter(JournalWriter):
    name = "labelstudio"
    mask_formats = ("rle", "polygons")
    FILE = "tasks.json"
    CONFIG = "label_config.xml"

    def __init__(self, output_dir: str | os.PathLike, url_prefix: str = DEFAULT_URL_PREFIX,
                 document_root: str | os.PathLike | None = None, from_name: str = "label", to_name: str = "image",
                 data_key: str = "image", model_version: str = "samkit-auto-annotate",
                 max_polygons: int | str = MAX_POLYGONS, max_polygon_points: int | str = MAX_POLYGON_POINTS) -> None:
        super().__init__(output_dir)
        self.max_polygons, self.max_polygon_points = int(max_polygons), int(max_polygon_points)
        self.url_prefix = url_prefix
        self.document_root = document_root
        self.from_name, self.to_name, self.data_key, self.model_version = from_name, to_name, data_key, model_version

    def encoder(self, shape: ShapeOptions) -> LabelStudioEncoder:
        self.mask_format = shape.mask_format
        return LabelStudioEncoder(shape, self.from_name, self.to_name, self.max_polygons, self.max_polygon_points)

    def fingerprint(self) -> dict[str, Any]:
        return {"from_name": self.from_name, "to_name": self.to_name, "max_polygons": self.max_polygons,
                "max_polygon_points": self.max_polygon_points}

    def start(self, run: RunInfo) -> set[str]:
        root = self.document_root or os.environ.get("LOCAL_FILES_DOCUMENT_ROOT") or run.root.parent
        self.root = Path(root).expanduser().resolve()
        if self.url_prefix == DEFAULT_URL_PREFIX and not run.root.resolve().is_relative_to(self.root):
            raise AnnotateError(
                f"the images in {run.root} are not under Label Studio's local-files document root {self.root}: "
                "give document_root (the LOCAL_FILES_DOCUMENT_ROOT Label Studio runs with) or url_prefix"
            )
        return super().start(run)

    def image_url(self, key: str) -> str:
        path = (self.run.root / key).resolve()
        if self.url_prefix == DEFAULT_URL_PREFIX:
            return self.url_prefix + quote(path.relative_to(self.root).as_posix())
        return self.url_prefix + quote(key)

    def finish(self, names: dict[int, str]) -> list[Path]:
        self.journal.close()
        path = self.output_dir / self.FILE
        labels = set(names.values())
        with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            handle.write("[")
            json_items(handle, (self._task(r, labels) for r in self.journal.records()))
            handle.write("]\n")
        config = self.output_dir / self.CONFIG
        tag = "BrushLabels" if getattr(self, "mask_format", "rle") == "rle" else "PolygonLabels"
        values = "".join(f"    <Label value={quoteattr(v)}/>\n" for v in sorted(labels))
        image = f'<Image name={quoteattr(self.to_name)} value={quoteattr("$" + self.data_key)} zoom="true"/>'
        control = f"<{tag} name={quoteattr(self.from_name)} toName={quoteattr(self.to_name)}>"
        with atomic_output(config) as tmp:
            tmp.write_text(f"<View>\n  {image}\n  {control}\n{values}  </{tag}>\n</View>\n", encoding="utf-8")
        return [path, config]

    def _task(self, record: dict[str, Any], labels: set[str]) -> dict[str, Any]:
        regions = record["objects"]
        for r in regions:  # names only the detections carried (a detector function's) go into the config too
            labels.update(r["value"].get("brushlabels", []) + r["value"].get("polygonlabels", []))
        score = mean_score([r["score"] for r in regions if "score" in r])
        prediction = {"model_version": self.model_version, "score": score, "result": regions}
        return {"data": {self.data_key: self.image_url(record["key"])}, "predictions": [prediction]}
