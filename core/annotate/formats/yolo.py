"""YOLO segmentation labels, as Ultralytics' auto_annotate writes them: one `<image stem>.txt`
per image, one object a line, `cls x1 y1 x2 y2 ...`, the outline's pixel-centre coordinates
divided by the image's width and height. An image without objects gets an empty file (a
training tool then reads it as background). Class names, when known, go to `classes.txt` and
`data.yaml`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...utils.files import atomic_output
from ..records import ImageInfo, ImageResult, ObjectMask, ShapeOptions
from ..shapes import one_ring
from .base import RunInfo, Writer


@dataclass(frozen=True)
class YoloEncoder:
    shape: ShapeOptions

    def __call__(self, image: ImageInfo, objects: list[ObjectMask], names: dict[int, str]) -> str:
        lines = []
        for obj in objects:
            ring = one_ring(obj, self.shape)
            if ring is None:
                continue
            coords = (ring / [image.width, image.height]).clip(0.0, 1.0).ravel()
            lines.append(f"{obj.class_id} " + " ".join(f"{v:.6f}" for v in coords))
        return "".join(line + "\n" for line in lines)


class YoloWriter(Writer):
    name = "yolo"
    mask_formats = ("polygons",)

    def encoder(self, shape: ShapeOptions) -> YoloEncoder:
        return YoloEncoder(shape)

    def start(self, run: RunInfo) -> set[str]:
        super().start(run)
        if not run.skip_existing:
            return set()
        with os.scandir(self.output_dir) as entries:
            return {e.name[:-4] for e in entries if e.name.endswith(".txt") and not e.name.startswith(".")
                    and e.name != "classes.txt"}

    def done_key(self, info: ImageInfo) -> str:
        return info.stem

    def write(self, result: ImageResult) -> None:
        with atomic_output(self.output_dir / f"{result.image.stem}.txt") as tmp:
            tmp.write_text(result.payload, encoding="utf-8")

    def finish(self, names: dict[int, str]) -> list[Path]:
        if not names:
            return [self.output_dir]
        top = max(names)
        with atomic_output(self.output_dir / "classes.txt") as tmp:
            tmp.write_text("".join(names.get(i, f"class{i}") + "\n" for i in range(top + 1)), encoding="utf-8")
        # JSON strings are valid YAML scalars: no YAML library needed to write them safely
        body = "".join(f"  {i}: {json.dumps(names.get(i, f'class{i}'))}\n" for i in range(top + 1))
        with atomic_output(self.output_dir / "data.yaml") as tmp:
            tmp.write_text(f"# class names of the labels in this folder (samkit auto-annotate)\nnc: {top + 1}\n"
                           f"names:\n{body}", encoding="utf-8")
        return [self.output_dir]
