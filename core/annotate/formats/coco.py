"""One COCO instance-segmentation JSON (`<output>/annotations.json`): images (file names relative
to the data folder), annotations with RLE (default) or polygon segmentations, the tight bbox,
the mask's pixel area, the detector's score and SAM's (`sam_score`), and categories (the
detector's class ids and names). pycocotools loads it (COCO(), loadRes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...utils import mask_utils
from ...utils.files import atomic_output
from ..records import ImageInfo, ObjectMask, ShapeOptions
from ..shapes import rings
from .base import JournalWriter, json_items

# pycocotools rasterises a polygon with pixel (0, 0) covering [0, 1) x [0, 1): an outline
# through pixel centres sits half a pixel up-left of that (measured in tests: the shift gives
# the closer round trip).
PIXEL_CENTRE = 0.5


@dataclass(frozen=True)
class CocoEncoder:
    shape: ShapeOptions

    def __call__(self, image: ImageInfo, objects: list[ObjectMask], names: dict[int, str]) -> list[dict[str, Any]]:
        out = []
        for obj in objects:
            if self.shape.mask_format == "rle":
                segmentation: Any = mask_utils.mask_to_rle(obj.full(image.height, image.width))
            else:
                segmentation = [[round(float(v), 2) for v in (ring + PIXEL_CENTRE).ravel()]
                                for ring in rings(obj, self.shape)]
                if not segmentation:
                    continue
            out.append({
                "category_id": obj.class_id,
                "segmentation": segmentation,
                "bbox": [float(v) for v in obj.bbox],
                "area": obj.area,
                "iscrowd": 0,
                "score": round(obj.score, 6),
                "sam_score": round(obj.sam_score, 6),
                "name": names.get(obj.class_id, str(obj.class_id)),
            })
        return out


class CocoWriter(JournalWriter):
    name = "coco"
    mask_formats = ("rle", "polygons")
    FILE = "annotations.json"

    def encoder(self, shape: ShapeOptions) -> CocoEncoder:
        return CocoEncoder(shape)

    def finish(self, names: dict[int, str]) -> list[Path]:
        self.journal.close()
        path = self.output_dir / self.FILE
        used: dict[int, str] = {}
        for record in self.journal.records():
            for ann in record["objects"]:
                used.setdefault(int(ann["category_id"]), ann.get("name", str(ann["category_id"])))
        categories = {**used, **names}
        with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            handle.write('{"info":' + json.dumps({"description": "samkit auto-annotate",
                                                  "data": str(self.run.root)}) + ',\n"images":[')
            json_items(handle, ({"id": i, "file_name": r["key"], "width": r["width"], "height": r["height"]}
                                for i, r in enumerate(self.journal.records(), 1)))
            handle.write('],\n"annotations":[')
            json_items(handle, self._annotations())
            handle.write('],\n"categories":')
            handle.write(json.dumps([{"id": k, "name": categories[k]} for k in sorted(categories)]) + "}\n")
        return [path]

    def _annotations(self):
        next_id = 1
        for image_id, record in enumerate(self.journal.records(), 1):
            for ann in record["objects"]:
                ann = dict(ann, id=next_id, image_id=image_id)
                ann.pop("name", None)
                next_id += 1
                yield ann
