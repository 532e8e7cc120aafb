"""An Ultralytics detector (`yolo11n.pt`, a trained `best.pt`), run by the ultralytics package.

ultralytics is optional: it imports torchvision, which does not work with every torch build
(not with the CPU wheel these machines carry). Where it does not import, the error says so and
points at the ONNX route, which needs neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..records import AnnotateError, Detections, ImageInfo
from .base import DetectOptions, Detector


def import_yolo(name: str):
    """ultralytics.YOLO, or one AnnotateError naming why it cannot be used."""
    try:
        from ultralytics import YOLO
    except Exception as exc:  # ImportError, or torchvision failing inside the import (RuntimeError, ...)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise AnnotateError(
            f"{name} is an Ultralytics model, which needs the ultralytics package; it does not import here "
            f"({reason}); ultralytics needs torchvision, which this torch build may not have. Export the model to "
            f"ONNX where ultralytics works (yolo export model={name} format=onnx) and pass the .onnx file: "
            "samkit runs it with onnxruntime"
        ) from None
    return YOLO


class UltralyticsModel(Detector):
    kind = "Ultralytics detector"

    def __init__(self, model: str, options: DetectOptions) -> None:
        super().__init__(options)
        self.model = model
        self._yolo = None
        self._load()
        names = getattr(self._yolo, "names", None) or {}
        self.names = {int(k): str(v) for k, v in dict(names).items()}

    def _unloaded(self) -> tuple[str, ...]:
        return ("_yolo",)

    def _load(self):
        if self._yolo is None:
            YOLO = import_yolo(Path(self.model).name)
            try:
                self._yolo = YOLO(self.model)
            except Exception as exc:
                raise AnnotateError(f"cannot load the Ultralytics model {self.model}: "
                                    f"{str(exc).splitlines()[0]}") from None
        return self._yolo

    def detect(self, image: np.ndarray, info: ImageInfo) -> Detections:
        o = self.options
        result = self._load().predict(
            np.ascontiguousarray(image[..., ::-1]),  # Ultralytics reads arrays as BGR (OpenCV's order)
            conf=o.conf, iou=o.iou, imgsz=o.imgsz, max_det=o.max_det,
            classes=list(o.classes) if o.classes is not None else None,
            device=o.device or None, verbose=False,
        )[0]
        boxes = result.boxes
        return Detections(boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy().astype(np.int64),
                          self.names)

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": str(self.model), "imgsz": self.options.imgsz}
