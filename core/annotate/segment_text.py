"""Detect, then segment: a detector's boxes on one image answered with SAM masks, for the adapters.

`text_segmenter("building. tree.", det_model)` builds a `DetectSegmenter` on a GroundingDINO /
OWLv2 text detector (see detectors/text.py); `DetectSegmenter.segment(image)` returns one
`FoundObject` per detected box (the phrase it matched, the detector's score and box, SAM's mask);
`generate(image)` gives the same as `samkit.MaskGenerator` records (plus `label`, `class_id`,
`det_score`, `det_box`), so a tool that runs a segment-everything generator per tile (the GIS
adapter) runs text prompts unchanged. Front ends (GIS, FiftyOne, Label Studio) only translate its
output into their own labels.

Picklable: the detector's network and SAM's predictor are rebuilt on first use in each process
(SAM through samkit.get_model's per-process cache), so a Dask worker can run it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .detectors import DetectOptions, Detector, finalize, load_detector
from .records import ImageInfo

#: boxes segmented by one decoder pass
BOX_BATCH = 64


@dataclass(frozen=True, eq=False)
class FoundObject:
    """One detected and segmented object: `label` (the phrase, or the detector's class name),
    `class_id` (the detector's id: the phrase's position in the text), `det_score` (detector
    confidence), `det_box` (4,) XYXY float image pixels the detector drew, `mask` (a
    samkit.ObjectMask: the HxW bool mask, SAM's predicted IoU as `score`, its stability score)."""

    label: str
    class_id: int
    det_score: float
    det_box: np.ndarray
    mask: Any  # samkit.ObjectMask


class DetectSegmenter:
    """A detector's boxes, each segmented by SAM with the box as its prompt (one mask per box).

    `detector`: a samkit.annotate Detector that works on pixels (a text detector, a YOLO ONNX
    export, a callable). `model`: a SAM model name, checkpoint path or loaded samkit.Sam (None:
    $SAMKIT_CHECKPOINT, else $SAMKIT_MODEL, else mobile_sam), or a samkit.Predictor to reuse.
    `device` / `dtype`: as samkit.get_model. `stability`: also compute each mask's stability
    score (costs a few ms per megapixel)."""

    def __init__(self, detector: Detector, model: Any = None, *, device: str | None = None,
                 dtype: str | None = None, stability: bool = True, batch_size: int = BOX_BATCH) -> None:
        from ..predictor import Predictor

        self.detector = detector
        self.device = device
        self.dtype = dtype
        self.stability = bool(stability)
        self.batch_size = int(batch_size)
        self._predictor = model if isinstance(model, Predictor) else None
        self.model = None if self._predictor is not None else model
        self.last_detections = 0  # boxes the detector gave on the last image

    @property
    def names(self) -> dict[int, str]:
        return dict(self.detector.names)

    def predictor(self):
        """SAM's predictor, made on first use on the process's cached model."""
        if self._predictor is None:
            from ..models import get_model
            from ..predictor import Predictor

            self._predictor = Predictor(get_model(self.model, self.device, self.dtype), cache_size=1)
        return self._predictor

    def load(self) -> "DetectSegmenter":
        """Load the detector and SAM now (a model that cannot load fails here, not on the first image)."""
        getattr(self.detector, "load", lambda: None)()
        self.predictor()
        return self

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if state["model"] is None and state["_predictor"] is not None:
            state["model"] = state["_predictor"].model  # a caller's predictor: its model travels
        state["_predictor"] = None
        return state

    def detect(self, image: np.ndarray):
        """The detector's boxes on `image` (HxWx3 uint8 RGB) after its thresholds, class filter,
        NMS and max_det, clipped to the image: a samkit.annotate Detections."""
        height, width = image.shape[:2]
        info = ImageInfo(Path("<image>"), "<image>", width, height)
        dets, _ = finalize(self.detector.detect(image, info), self.detector, width, height)
        return dets

    def segment(self, image: np.ndarray) -> list[FoundObject]:
        """One FoundObject per detected box, highest detector score first; a box whose mask comes
        out empty is kept (with an empty mask) so callers can say so."""
        from ..prompts import Prompt, segment_objects

        dets = self.detect(image)
        self.last_detections = len(dets)
        if not len(dets):
            return []
        masks = segment_objects(self.predictor(), [Prompt(box=box) for box in dets.boxes], image,
                                multimask=False, stability=self.stability, batch_size=self.batch_size)
        return [FoundObject(dets.name_of(c), int(c), float(s), np.asarray(b, dtype=np.float64), m)
                for b, s, c, m in zip(dets.boxes, dets.scores, dets.class_ids, masks)]

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """segment(image) as samkit.MaskGenerator records (segmentation, area, bbox XYWH,
        predicted_iou, stability_score, point_coords [], crop_box) plus label, class_id, det_score and
        det_box (XYXY); empty masks left out."""
        height, width = image.shape[:2]
        records = []
        for found in self.segment(image):
            box = found.mask.box
            if box is None:
                continue
            stability = found.mask.stability_score
            records.append({
                "segmentation": found.mask.mask,
                "area": found.mask.area,
                "bbox": [box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0],
                "predicted_iou": found.mask.score,
                "stability_score": 1.0 if stability is None else stability,
                "point_coords": [],
                "crop_box": [0, 0, width, height],
                "label": found.label,
                "class_id": found.class_id,
                "det_score": found.det_score,
                "det_box": found.det_box.tolist(),
            })
        return records

    def fingerprint(self) -> str:
        """What makes this segmenter's output what it is (a resumed run compares it)."""
        model = self.model if self._predictor is None else getattr(self._predictor.model, "checkpoint_path", None)
        if model is not None and not isinstance(model, (str, Path)):
            model = f"{getattr(model, 'arch', type(model).__name__)}:{getattr(model, 'checkpoint_path', None)}"
        desc = {"detector": self.detector.fingerprint(), "sam": str(model), "dtype": str(self.dtype),
                "detect": {k: v for k, v in dataclasses.asdict(self.detector.options).items() if k != "device"}}
        return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def text_segmenter(text: str | Sequence[str], det_model: Any = None, model: Any = None, *, conf: float = 0.25,
                   text_threshold: float = 0.25, iou: float = 0.45, max_det: int = 300, device: str | None = None,
                   dtype: str | None = None, stability: bool = True) -> DetectSegmenter:
    """A DetectSegmenter on a text detector: `text` the phrases to find ("building. tree." or a
    list), `det_model` a GroundingDINO / OWLv2 Hugging Face id or local folder (None:
    GroundingDINO tiny), `model` SAM (see DetectSegmenter). conf is the box threshold,
    text_threshold the matched phrase's (GroundingDINO), iou the class-aware NMS threshold.
    The detector loads now: a model that cannot load raises AnnotateError with one line (offline:
    naming the id and how to pass a local folder); so does text with a detector that takes none."""
    options = DetectOptions(conf=float(conf), iou=float(iou), max_det=int(max_det),
                            text_threshold=float(text_threshold), device=device or None)
    return DetectSegmenter(load_detector(det_model, text, options), model, device=device, dtype=dtype,
                           stability=stability)
