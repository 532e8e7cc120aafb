"""What every detector shares: the options, the base class, class-aware NMS and the last filters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...utils import mask_utils
from ..records import Detections, ImageInfo


@dataclass(frozen=True)
class DetectOptions:
    """Ultralytics' detection options: conf (keep scores > conf; for text detectors the box
    threshold), iou (class-aware NMS threshold), imgsz (the YOLO input size), max_det (most boxes
    per image), classes (class ids to keep, None: all), text_threshold (text detectors: the
    matched words' score), device (None: the best available)."""

    conf: float = 0.25
    iou: float = 0.45
    imgsz: int = 640
    max_det: int = 300
    classes: tuple[int, ...] | None = None
    text_threshold: float = 0.25
    device: str | None = None


class Detector:
    """Finds boxes in an image. Subclasses set `kind` (words for messages), `takes_text`,
    `from_labels` (boxes read from files: no score threshold, NMS or cap applies) and implement
    detect(). Heavy state (an inference session, a network) is loaded on first use and left out
    when pickled, so a detector can be sent to Dask workers."""

    kind = "detector"
    takes_text = False
    from_labels = False

    def __init__(self, options: DetectOptions) -> None:
        self.options = options
        self.names: dict[int, str] = {}

    def known_ids(self) -> set[int] | None:
        """The class ids this detector can return, when known before it runs."""
        return set(self.names) if self.names else None

    def prepare(self, images: list[ImageInfo], root: Path) -> None:
        """Check the detector against the run's images before anything runs (label files that
        match no image, ...); raise AnnotateError with one line."""

    def detect(self, image: np.ndarray, info: ImageInfo) -> Detections:
        """Boxes in `image` (HxWx3 uint8 RGB) of the image `info`."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What makes this detector's output what it is (compared when a run resumes)."""
        return {"kind": self.kind}

    def _unloaded(self) -> tuple[str, ...]:
        """Attributes to drop when pickled (loaded lazily again)."""
        return ()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in self._unloaded():
            state[name] = None
        return state


def file_fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def class_aware_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by NMS run per class (boxes of different classes never suppress each other),
    highest score first. Boxes are shifted apart by class, as Ultralytics and torchvision's
    batched_nms do, so one NMS call covers every class."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(np.abs(boxes).max()) + 1.0
    shifted = boxes + (class_ids.astype(np.float64) * 2.0 * span)[:, None]
    return mask_utils.nms(shifted, scores, iou)


def finalize(dets: Detections, detector: Detector, width: int, height: int) -> tuple[Detections, int]:
    """The last, shared filters: the class filter, boxes clipped to the image (those with no
    area left dropped), highest score first (stable: equal scores keep the detector's order),
    and for model detectors the score threshold and max_det. Returns the detections and how many
    boxes were dropped as degenerate."""
    options = detector.options
    keep = np.ones(len(dets), dtype=bool)
    if options.classes is not None:
        keep &= np.isin(dets.class_ids, np.asarray(options.classes, dtype=np.int64))
    if not detector.from_labels:
        keep &= dets.scores > options.conf
    dets = dets.select(keep)
    boxes = dets.boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    finite = np.isfinite(boxes).all(axis=1)
    usable = finite & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    degenerate = int((~usable).sum())
    dets = Detections(boxes, dets.scores, dets.class_ids, dets.names).select(usable)
    order = np.argsort(-dets.scores, kind="stable")
    if not detector.from_labels:
        order = order[: max(int(options.max_det), 0)]
    return dets.select(order), degenerate
