"""Segment given objects on one image: prompts in, one mask per object out, the same way for every
front end (a Label Studio click or rectangle, a FiftyOne box or keypoint, a GIS point or box).

`segment_objects(predictor, prompts)` answers each `Prompt` (points and/or a box, in image pixels)
with an `ObjectMask`: the mask, its predicted IoU, its stability score and its tight box. The
best-mask policy: a prompt of one point and no box is ambiguous (a part or the whole?), so SAM is
asked for three masks and the one with the highest predicted IoU is kept, as SAM's authors
recommend; any other prompt asks for one mask. `best_first` orders segment-everything records by
predicted IoU and keeps the best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .errors import PromptError
from .mask_generator import calculate_stability_score
from .predictor import Predictor
from .utils.mask_utils import MaskBox, tight_box

#: boxes whose image-size logits are held at once when stability scores are asked for
#: (8 float32 masks of 1800x1200 are 69 MB)
LOGITS_CHUNK = 8


@dataclass(frozen=True)
class Prompt:
    """One object's prompt in image pixels: `points` (N, 2) XY with `labels` (N,) 1 = object,
    0 = background (default all 1), and/or `box` (4,) XYXY."""

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    def __post_init__(self) -> None:
        points = None if self.points is None else np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        if points is not None and len(points) == 0:
            points = None
        if points is None and self.labels is not None and np.size(self.labels):
            raise PromptError("point labels without points: give one label per point")
        labels = None
        if points is not None:
            labels = (np.ones(len(points), dtype=np.int64) if self.labels is None
                      else np.asarray(self.labels, dtype=np.int64).reshape(-1))
        box = None if self.box is None else np.asarray(self.box, dtype=np.float64).reshape(-1)
        if points is None and box is None:
            raise PromptError("a prompt needs points or a box")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "box", box)

    @property
    def ambiguous(self) -> bool:
        """One point and no box: SAM cannot tell a part from the whole, so three masks are made."""
        return self.box is None and self.points is not None and len(self.points) == 1


@dataclass(frozen=True, eq=False)
class ObjectMask:
    """One object's answer: `mask` (H, W) bool at image size, `score` its predicted IoU,
    `stability_score` (the official definition: IoU of the mask thresholded at +-1 logit; None
    when not asked for; 0 for an empty mask); `box` and `crop()` its tight box and crop."""

    mask: np.ndarray
    score: float
    stability_score: float | None = None

    @cached_property
    def box(self) -> MaskBox | None:
        """Tight box, half-open pixels (x0, y0, x1, y1); None for an empty mask."""
        return tight_box(self.mask)

    def crop(self) -> np.ndarray | None:
        """The mask cropped to its tight box (contiguous), or None for an empty mask."""
        box = self.box
        return None if box is None else np.ascontiguousarray(self.mask[box.y0 : box.y1, box.x0 : box.x1])

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def empty(self) -> bool:
        return self.box is None


def segment_objects(
    predictor: Any,
    prompts: Iterable[Prompt],
    image: Any = None,
    *,
    multimask: bool | None = None,
    stability: bool = True,
    stability_offset: float = 1.0,
    batch_size: int = 64,
) -> list[ObjectMask]:
    """One ObjectMask per prompt, in order, on `image` (set on the predictor first when given;
    else the predictor's current image).

    `predictor`: a samkit.Predictor, or anything with the official SamPredictor.predict(
    point_coords, point_labels, box, multimask_output, return_logits) call. A samkit.Predictor
    decodes only the kept mask (best_only), decodes box-only prompts `batch_size` at a time and
    upscales only what reaches the image. `multimask`: None is the best-mask policy (three
    masks for an ambiguous prompt, see Prompt.ambiguous); True / False ask every prompt for three
    masks / one. `stability`: also compute each mask's stability score (from its logits at image
    size; costs a few ms per megapixel) with `stability_offset`."""
    prompts = list(prompts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if image is not None:
        predictor.set_image(image)
    fast = isinstance(predictor, Predictor)
    threshold = float(getattr(getattr(predictor, "model", None), "mask_threshold", 0.0))
    wants_three = [p.ambiguous if multimask is None else bool(multimask) for p in prompts]
    out: list[ObjectMask | None] = [None] * len(prompts)
    if fast:  # boxes alone decode together, one decoder pass per batch
        together = [i for i, p in enumerate(prompts) if p.points is None and not wants_three[i]]
        for start in range(0, len(together), batch_size):
            chunk = together[start : start + batch_size]
            boxes = np.stack([prompts[i].box for i in chunk])
            for i, found in zip(chunk, _boxes(predictor, boxes, stability, threshold, stability_offset)):
                out[i] = found
    for i, prompt in enumerate(prompts):
        if out[i] is None:
            out[i] = _one(predictor, prompt, wants_three[i], fast, stability, threshold, stability_offset)
    return out  # type: ignore[return-value]


def _one(predictor, prompt: Prompt, three: bool, fast: bool, stability: bool, threshold: float,
         offset: float) -> ObjectMask:
    options = {"best_only": True, "return_low_res": False} if fast else {}
    masks, scores, low_res = predictor.predict(point_coords=prompt.points, point_labels=prompt.labels,
                                               box=prompt.box, multimask_output=three, return_logits=stability,
                                               **options)
    best = int(np.argmax(scores))
    if not stability:
        return ObjectMask(np.asarray(masks[best], dtype=bool), float(scores[best]))
    low = None if low_res is None else low_res[best]
    return _with_stability(masks[best], float(scores[best]), threshold, offset, low)


def _boxes(predictor: Predictor, boxes: np.ndarray, stability: bool, threshold: float,
           offset: float) -> list[ObjectMask]:
    if not stability:
        masks, scores, _ = predictor.predict_batch(boxes=boxes, multimask_output=False, return_low_res=False)
        return [ObjectMask(masks[k, 0], float(scores[k, 0])) for k in range(len(boxes))]
    found = []
    for start in range(0, len(boxes), LOGITS_CHUNK):
        logits, scores, _ = predictor.predict_batch(boxes=boxes[start : start + LOGITS_CHUNK], multimask_output=False,
                                                    return_logits=True, return_low_res=False)
        found += [_with_stability(logits[k, 0], float(scores[k, 0]), threshold, offset) for k in range(len(logits))]
    return found


def _with_stability(logits: np.ndarray, score: float, threshold: float, offset: float,
                    low_res: np.ndarray | None = None) -> ObjectMask:
    logits = np.asarray(logits)
    if logits.dtype == bool:
        # a predictor that returns masks whatever return_logits says: its low-res logits are the
        # only logits there are
        mask, logits = logits.copy(), (None if low_res is None else np.asarray(low_res, dtype=np.float32))
    else:
        mask = logits > threshold
    if logits is None:
        return ObjectMask(mask, score)
    value = float(calculate_stability_score(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None],
                                            threshold, offset)[0])
    # 0 / 0: no pixel even above threshold - offset, so the mask is empty
    return ObjectMask(mask, score, value if math.isfinite(value) else 0.0)


def best_first(records: Sequence[dict], max_masks: int | None = None) -> list[dict]:
    """Segment-everything records (MaskGenerator's), highest predicted IoU first (ties keep their
    order); the first `max_masks` of them (None or 0: all)."""
    ordered = sorted(records, key=lambda record: float(record["predicted_iou"]), reverse=True)
    return ordered[: int(max_masks)] if max_masks else ordered
