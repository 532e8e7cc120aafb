"""`samkit.auto_annotate(..., format="fiftyone")`: auto-annotation into a field of a FiftyOne dataset.

Core writes no FiftyOne itself (it must not import it): this writer is found through the entry
point `samkit.annotate_formats` (pyproject.toml). Each image becomes a sample of the dataset
(found by its file path, added when missing), and its objects an `fo.Detections` in the field:
label = class name, bounding_box = the mask's tight box (relative [x, y, w, h]), mask = the mask
cropped to that box (FiftyOne's convention, as the rest of samkit.fiftyone writes them),
confidence = the detector's score, plus `sam_score` (SAM's predicted IoU), `class_id` and
`area`. Masks are stored inline, or as PNGs when large (mask_storage, as the bulk runs).

    samkit.auto_annotate("images/", "boxes.json", format="fiftyone",
                         format_options={"dataset": "my-dataset", "field": "sam"})
    samkit annotate images/ --det-model boxes.json --format fiftyone -O dataset=my-dataset -O field=sam
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samkit.annotate.formats.base import RunInfo, Writer
from samkit.annotate.records import AnnotateError, ImageInfo, ImageResult, ObjectMask, ShapeOptions

INFO_KEY = "samkit_auto_annotate"  # dataset.info[INFO_KEY][field]: the settings that made the field


@dataclass(frozen=True)
class FiftyOneEncoder:
    """Objects -> plain dicts (no FiftyOne objects: the encoder also runs on Dask workers)."""

    def __call__(self, image: ImageInfo, objects: list[ObjectMask], names: dict[int, str]) -> list[dict[str, Any]]:
        out = []
        for obj in objects:
            x, y, w, h = obj.bbox
            out.append({
                "label": names.get(obj.class_id, str(obj.class_id)),
                "class_id": obj.class_id,
                "bounding_box": [x / image.width, y / image.height, w / image.width, h / image.height],
                "mask": np.ascontiguousarray(obj.crop),
                "confidence": obj.score,
                "sam_score": obj.sam_score,
                "area": obj.area,
            })
        return out


class FiftyOneWriter(Writer):
    name = "fiftyone"
    mask_formats = ("rle",)  # masks, never polygons

    def __init__(self, output_dir: str | os.PathLike, dataset: Any = None, field: str = "auto_annotate",
                 mask_storage: str = "auto", mask_dir: str | None = None) -> None:
        super().__init__(output_dir)
        if dataset is None or (isinstance(dataset, str) and not dataset.strip()):
            raise AnnotateError("format fiftyone needs a dataset: format_options={'dataset': NAME} "
                                "(-O dataset=NAME); a missing dataset is created")
        self.dataset_spec, self.field = dataset, str(field)
        self.mask_storage, self.mask_dir = mask_storage, mask_dir

    def encoder(self, shape: ShapeOptions) -> FiftyOneEncoder:
        return FiftyOneEncoder()

    def fingerprint(self) -> dict[str, Any]:
        return {"field": self.field}

    def start(self, run: RunInfo) -> set[str]:
        import fiftyone as fo

        from samkit.fiftyone.runner import MaskWriter, check_output_field

        self.run = run
        if isinstance(self.dataset_spec, fo.Dataset):
            self.dataset = self.dataset_spec
        elif fo.dataset_exists(str(self.dataset_spec)):
            self.dataset = fo.load_dataset(str(self.dataset_spec))
        else:
            self.dataset = fo.Dataset(str(self.dataset_spec))
            self.dataset.persistent = True
        check_output_field(self.dataset, self.field)
        self.masks = MaskWriter(self.mask_storage, self.mask_dir, self.dataset.name, self.field)
        wanted = json.loads(json.dumps(run.fingerprint, default=str))
        info = dict(self.dataset.info or {})
        made = dict(info.get(INFO_KEY) or {})
        if run.skip_existing and made.get(self.field) not in (None, wanted):
            raise AnnotateError(f"field {self.field!r} of dataset {self.dataset.name!r} was made with other settings; "
                                "skip_existing would mix them: run without it to overwrite, or choose another field")
        made[self.field] = wanted
        info[INFO_KEY] = made
        self.dataset.info = info
        self.dataset.save()
        if not run.skip_existing or not self.dataset.has_sample_field(self.field):
            return set()
        root = str(run.root.resolve()) + os.sep
        done = set()
        for path, value in zip(*self.dataset.values(["filepath", self.field])):
            if value is not None and path.startswith(root):
                done.add(Path(os.path.relpath(path, root)).as_posix())
        return done

    def write(self, result: ImageResult) -> None:
        import fiftyone as fo
        import fiftyone.core.labels as fol

        path = str(result.image.path)
        try:
            sample = self.dataset[path]
        except KeyError:
            sample = fo.Sample(filepath=path)
            self.dataset.add_sample(sample)
        detections = [fol.Detection(**obj) for obj in result.payload]
        self.masks.store(sample.id, detections, replace=True)
        sample[self.field] = fol.Detections(detections=detections)
        sample.save()

    def describe(self) -> str:
        return f"FiftyOne dataset {self.dataset.name!r}, field {self.field!r}"
