"""A YOLO detector exported to ONNX by Ultralytics (yolov8*.onnx, yolo11*.onnx), run with
onnxruntime: no torchvision, no ultralytics.

The export's facts (Ultralytics `export format=onnx`): one input (1, 3, imgsz, imgsz), RGB in
[0, 1]; the image is letterboxed into it (scaled to fit, centred, padded with grey 114); one
output (1, 4 + nc, N): per candidate cx, cy, w, h in the letterboxed frame, then one score per
class. NMS is not in the graph. Class names are in the model's metadata (`names`, a Python dict
literal). An export with NMS (`nms=True`, or end-to-end models) gives (1, N, 6) instead: x0, y0,
x1, y1, score, class, already suppressed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..records import AnnotateError, Detections, ImageInfo
from .base import DetectOptions, Detector, class_aware_nms, file_fingerprint

PAD_VALUE = 114  # Ultralytics' letterbox grey
MAX_NMS = 30000  # Ultralytics' cap on candidates going into NMS


@dataclass(frozen=True)
class Letterbox:
    """An image letterboxed into the network's input: the (1, 3, H, W) float32 tensor, the scale
    applied to the image, and the padding (left, top) in input pixels."""

    tensor: np.ndarray
    gain: float
    pad: tuple[float, float]


def letterbox(image: np.ndarray, size: tuple[int, int]) -> Letterbox:
    """Ultralytics' letterbox (auto=False, scaleup=True, centred): scale the HxWx3 uint8 RGB
    image by min(H_in / H, W_in / W), resize bilinearly, pad with 114 to the input size (H_in,
    W_in), then CHW float32 in [0, 1]."""
    height, width = image.shape[:2]
    in_h, in_w = size
    gain = min(in_h / height, in_w / width)
    new_w, new_h = int(round(width * gain)), int(round(height * gain))
    dw, dh = (in_w - new_w) / 2, (in_h - new_h) / 2
    resized = image if (new_w, new_h) == (width, height) else cv2.resize(image, (new_w, new_h),
                                                                         interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                value=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    tensor = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    return Letterbox(tensor, gain, (float(left), float(top)))


def decode(output: np.ndarray, box: Letterbox, width: int, height: int, options: DetectOptions,
           names: dict[int, str]) -> Detections:
    """A YOLO export's raw output (1, 4 + nc, N) -> detections in image pixels: score = the best
    class's score, kept when > conf and in `classes`, at most MAX_NMS by score into class-aware
    NMS (IoU > iou suppressed), at most max_det; boxes from (cx, cy, w, h) in the letterboxed
    frame back to the image (minus the padding, divided by the gain), clipped to it. An output
    (1, N, 6) is an export with NMS: x0, y0, x1, y1, score, class in the letterboxed frame."""
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 3 or output.shape[0] != 1:
        raise AnnotateError(f"unexpected YOLO ONNX output shape {output.shape}: expected (1, 4 + classes, N)")
    nc = len(names or {})
    with_nms = output.shape[2] == 6 and (output.shape[1] != 4 + nc if nc else output.shape[1] > 6)
    if not with_nms and output.shape[1] < 5:
        raise AnnotateError(f"unexpected YOLO ONNX output shape {output.shape}: expected (1, 4 + classes, N)")
    if with_nms:
        rows = output[0]  # (N, 6): already suppressed
        xyxy, scores, class_ids = rows[:, :4].astype(np.float64), rows[:, 4].astype(np.float64), rows[:, 5]
        class_ids = class_ids.astype(np.int64)
        keep = scores > options.conf
        if options.classes is not None:
            keep &= np.isin(class_ids, options.classes)
        xyxy, scores, class_ids = xyxy[keep], scores[keep], class_ids[keep]
        order = np.argsort(-scores, kind="stable")[: options.max_det]
    else:
        rows = output[0].T  # (N, 4 + nc)
        class_scores = rows[:, 4:]
        class_ids = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(rows)), class_ids].astype(np.float64)
        keep = scores > options.conf
        if options.classes is not None:
            keep &= np.isin(class_ids, options.classes)
        rows, scores, class_ids = rows[keep], scores[keep], class_ids[keep]
        top = np.argsort(-scores, kind="stable")[:MAX_NMS]
        rows, scores, class_ids = rows[top], scores[top], class_ids[top]
        cx, cy, w, h = (rows[:, i].astype(np.float64) for i in range(4))
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        order = class_aware_nms(xyxy, scores, class_ids, options.iou)[: options.max_det]
    xyxy, scores, class_ids = xyxy[order], scores[order], class_ids[order]
    left, top = box.pad
    xyxy = (xyxy - np.array([left, top, left, top])) / box.gain
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
    return Detections(xyxy, scores, class_ids, names)


def metadata_names(meta: dict[str, str]) -> dict[int, str]:
    """Class names from an Ultralytics export's metadata ("{0: 'person', 1: 'bicycle'}")."""
    text = meta.get("names")
    if not text:
        return {}
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {}
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return {i: str(v) for i, v in enumerate(names)}
    return {}


class YoloOnnx(Detector):
    """A YOLO ONNX export run with onnxruntime (CPU, or CUDA when the device asks for it and the
    installed onnxruntime has it)."""

    kind = "YOLO ONNX detector"

    def __init__(self, path: Path, options: DetectOptions) -> None:
        super().__init__(options)
        self.path = path.resolve()
        self._session = None
        self.names = metadata_names(self._load().get_modelmeta().custom_metadata_map)

    def _unloaded(self) -> tuple[str, ...]:
        return ("_session",)

    def _load(self):
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError as exc:
                raise AnnotateError(f"{self.path.name} needs onnxruntime: pip install onnxruntime ({exc})") from None
            providers = ["CPUExecutionProvider"]
            device = (self.options.device or "").lower()
            if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            try:
                self._session = ort.InferenceSession(str(self.path), providers=providers)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise AnnotateError(f"{self.path} is not an ONNX model onnxruntime can load: "
                                    f"{str(exc).splitlines()[0]}") from None
        return self._session

    def input_size(self) -> tuple[int, int]:
        """(H, W) of the network input: the graph's own when fixed, else imgsz (square)."""
        shape = self._load().get_inputs()[0].shape
        if len(shape) != 4:
            raise AnnotateError(f"{self.path.name}: expected an image input (1, 3, H, W), got shape {shape}")
        h, w = shape[2], shape[3]
        size = int(self.options.imgsz)
        return (h if isinstance(h, int) and h > 0 else size, w if isinstance(w, int) and w > 0 else size)

    def detect(self, image: np.ndarray, info: ImageInfo) -> Detections:
        session = self._load()
        box = letterbox(image, self.input_size())
        output = session.run(None, {session.get_inputs()[0].name: box.tensor})[0]
        height, width = image.shape[:2]
        return decode(output, box, width, height, self.options, self.names)

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, **file_fingerprint(self.path), "imgsz": self.options.imgsz}
