"""From an image and FiftyOne prompt labels to ``fo.Detections`` with box-relative instance masks.

Shared by the operators, the bulk runners (:mod:`samkit.fiftyone.runner`) and
:class:`samkit.fiftyone.SamModel`. Mask convention (FiftyOne's): a detection's ``mask`` covers
its ``bounding_box`` only; the box is ``[x, y, w, h]`` relative to the image, and a mask made
here from a full-image mask is its tight crop, so ``w * width`` and ``h * height`` are the
crop's exact pixel size.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

import fiftyone.core.labels as fol

import samkit
from samkit.options import GeneratorOptions
from samkit.utils.mask_utils import crop_to_box
from samkit.utils.mask_utils import score_of_predicted_iou as confidence_of  # as FiftyOne's zoo SAM clamps

# The segment-everything settings the FiftyOne side exposes, under their official names, with
# GeneratorOptions' defaults (pred_iou_thresh None: the model family's).
EVERYTHING_OPTIONS = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                      "box_nms_thresh", "crop_n_layers", "min_mask_region_area")
EVERYTHING_DEFAULTS: dict[str, Any] = {name: GeneratorOptions.default(name) for name in EVERYTHING_OPTIONS}

DEFAULT_POINT_LABELS_ATTR = "sam_labels"  # FiftyOne's SAM integration reads the same attribute
DEFAULT_BOX_BATCH_SIZE = 64


def tight_crop(mask: np.ndarray) -> Optional[tuple[list[float], np.ndarray]]:
    """Full-image HxW mask -> (relative [x, y, w, h] of its tight box, the mask cropped to it).

    None for an empty mask.
    """
    found = crop_to_box(mask)
    if found is None:
        return None
    box, crop = found
    height, width = mask.shape
    return [box.x0 / width, box.y0 / height, box.width / width, box.height / height], crop


def box_pixels(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Relative [x, y, w, h] -> pixel (x0, y0, x1, y1), rounded, clipped, at least 1x1."""
    x, y, w, h = (float(v) for v in box)
    x0 = min(max(int(round(x * width)), 0), width - 1)
    y0 = min(max(int(round(y * height)), 0), height - 1)
    x1 = min(max(int(round((x + w) * width)), x0 + 1), width)
    y1 = min(max(int(round((y + h) * height)), y0 + 1), height)
    return x0, y0, x1, y1


def box_prompt(box: Sequence[float], width: int, height: int) -> Optional[np.ndarray]:
    """Relative [x, y, w, h] -> absolute XYXY float box clipped to the image; None if degenerate."""
    if box is None or len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        return None
    x, y, w, h = (float(v) for v in box)
    x0, x1 = np.clip([x * width, (x + w) * width], 0, width)
    y0, y1 = np.clip([y * height, (y + h) * height], 0, height)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def _named(kind: str, label: "fol.Label") -> str:
    name = getattr(label, "label", None)
    return f"{kind} {label.id}" + (f" ({name!r})" if name else "")


def box_problem(detection: "fol.Detection", width: int, height: int) -> str:
    """Why :func:`box_prompt` gives no prompt for this detection's box, in a few words."""
    box = detection.bounding_box
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        return f"{_named('detection', detection)} has no usable box ({box!r} is not 4 numbers [x, y, w, h])"
    shown = "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
    x, y, w, h = values
    if w * width < 1 or h * height < 1:
        return f"{_named('detection', detection)} has a box of zero size {shown}"
    return f"{_named('detection', detection)} has a box outside the image {shown} (relative [x, y, w, h])"


def point_prompt(
    keypoint: "fol.Keypoint", width: int, height: int, labels_attr: str = DEFAULT_POINT_LABELS_ATTR
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """A Keypoint -> (N, 2) absolute XY points and (N,) labels (1 positive, 0 negative).

    Points that are NaN (FiftyOne's "not visible") are dropped. Labels come from the keypoint's
    ``labels_attr`` attribute, one per point (1/0 or True/False); without it every point is
    positive. None if no point is left; a :class:`samkit.PromptError` for malformed points or labels.
    """
    try:
        points = np.asarray(keypoint.points or [], dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise samkit.PromptError(
            f"{_named('keypoint', keypoint)} has points that are not [x, y] pairs: {keypoint.points!r}"
        ) from None
    labels_value = keypoint[labels_attr] if keypoint.has_field(labels_attr) else None
    if labels_value is None:
        labels = np.ones(len(points), dtype=np.int64)
    else:
        if not isinstance(labels_value, (list, tuple, np.ndarray)):
            raise samkit.PromptError(
                f"{_named('keypoint', keypoint)} has {labels_value!r} in its '{labels_attr}' attribute "
                "(give a list with one label per point: 1 positive, 0 negative)"
            )
        labels = np.asarray([int(bool(v)) for v in labels_value], dtype=np.int64)
        if len(labels) != len(points):
            raise samkit.PromptError(
                f"{_named('keypoint', keypoint)} has {len(points)} points but {len(labels)} values in its "
                f"'{labels_attr}' attribute (give one label per point: 1 positive, 0 negative)"
            )
    keep = np.isfinite(points).all(axis=1)
    if not keep.any():
        return None
    coords = points[keep] * np.array([width, height], dtype=np.float64)
    return coords.astype(np.float32), labels[keep]


def _copy_prompt(label: "fol.Label") -> dict[str, Any]:
    """The prompt's label, tags and custom attributes, to carry onto the new detection."""
    skip = {"id", "_id", "_cls", "bounding_box", "mask", "mask_path", "points", "confidence", "index"}
    return {
        name: value
        for name, value in label.iter_fields()
        if name not in skip and value is not None and not (name == "attributes" and not value)
    }


MAX_PROBLEMS_SHOWN = 3


def describe_problems(problems: Sequence[str], sample_id: str, prompt_field: str) -> str:
    """One line for a sample whose prompts could not all be used."""
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    if len(problems) > MAX_PROBLEMS_SHOWN:
        shown += f"; and {len(problems) - MAX_PROBLEMS_SHOWN} more"
    count = f"{len(problems)} prompt{'s' if len(problems) != 1 else ''}"
    return f"sample {sample_id}: {count} in '{prompt_field}' got no mask: {shown}"


class Segmenter:
    """Runs one model on images and returns FiftyOne labels. Not thread-safe: one per run."""

    def __init__(
        self,
        model: Any = None,
        device: Optional[str] = None,
        everything_options: Optional[dict[str, Any]] = None,
        max_masks: Optional[int] = None,
        box_batch_size: int = DEFAULT_BOX_BATCH_SIZE,
        point_labels_attr: str = DEFAULT_POINT_LABELS_ATTR,
        dtype: Optional[str] = None,
    ) -> None:
        # a name or path is loaded once per process (samkit.get_model): the App server and
        # delegated workers run many operations in one process
        self.model = samkit.get_model(model, device, dtype)
        self.everything_options = {**EVERYTHING_DEFAULTS, **(everything_options or {})}
        self.max_masks = int(max_masks) if max_masks else None
        self.box_batch_size = max(1, int(box_batch_size))
        self.point_labels_attr = point_labels_attr or DEFAULT_POINT_LABELS_ATTR
        self._predictor: Optional[samkit.Predictor] = None
        self._generator = None
        self.last_masks = 0  # masks made by the last call (in place: not the detections left as they were)
        # why prompts of the last call got no mask (bad box, wrong labels, ...): one line each
        self.last_problems: list[str] = []

    @property
    def predictor(self) -> "samkit.Predictor":
        if self._predictor is None:
            self._predictor = samkit.Predictor(self.model, cache_size=1)
        return self._predictor

    # -- segment everything -------------------------------------------------------------------

    def everything(self, image: np.ndarray) -> "fol.Detections":
        if self._generator is None:
            self._generator = samkit.MaskGenerator(self.model, predictor=self.predictor, **self.everything_options)
        self.last_problems = []
        records = samkit.best_first(self._generator.generate(image), self.max_masks)
        detections = []
        for record in records:
            crop = tight_crop(np.asarray(record["segmentation"], dtype=bool))
            if crop is None:
                continue
            box, mask = crop
            iou = float(record["predicted_iou"])
            detections.append(
                fol.Detection(
                    bounding_box=box,
                    mask=mask,
                    confidence=confidence_of(iou),
                    predicted_iou=iou,
                    stability_score=float(record["stability_score"]),
                    area=int(record["area"]),
                )
            )
        self.last_masks = len(detections)
        return fol.Detections(detections=detections)

    # -- prompts ------------------------------------------------------------------------------

    def prompts(self, image: np.ndarray, value: Any, in_place: bool = False, only_missing: bool = False):
        """Dispatch on the prompt label's type (Detections -> boxes, Keypoints -> points).

        A prompt that cannot be used gets no mask and a line in ``last_problems``."""
        if isinstance(value, fol.Detections):
            return self.boxes(image, value, in_place=in_place, only_missing=only_missing)
        if isinstance(value, fol.Keypoints):
            if in_place:
                raise samkit.PromptError(
                    "masks cannot be written onto Keypoints; give an output field for the new Detections"
                )
            return self.keypoints(image, value)
        raise samkit.PromptError(
            f"prompt value is a {type(value).__name__}; SAM prompts come from Detections (boxes) "
            "or Keypoints (points)"
        )

    def boxes(
        self, image: np.ndarray, detections: "fol.Detections", in_place: bool = False, only_missing: bool = False
    ) -> "fol.Detections":
        """One mask per box. New detections (tight box, label and attributes of the prompt, which
        is named in ``prompt_id``), or, ``in_place``, the prompt detections themselves with a
        mask cropped to their own box (boxes, labels, confidences untouched)."""
        height, width = image.shape[:2]
        todo: list[tuple["fol.Detection", np.ndarray]] = []
        self.last_problems = []
        for det in detections.detections:
            if in_place and only_missing and (det.mask is not None or det.mask_path is not None):
                continue
            prompt = box_prompt(det.bounding_box, width, height)
            if prompt is None:
                self.last_problems.append(box_problem(det, width, height))
            else:
                todo.append((det, prompt))

        results: dict[int, tuple[np.ndarray, float]] = {}
        if todo:
            found = samkit.segment_objects(self.predictor, [samkit.Prompt(box=prompt) for _, prompt in todo], image,
                                           stability=False, batch_size=self.box_batch_size)
            for (det, _), obj in zip(todo, found):
                results[id(det)] = (obj.mask, obj.score)

        for det, _ in todo:
            if not results[id(det)][0].any():  # a usable box, but SAM saw nothing in it
                self.last_problems.append(f"{_named('detection', det)} gave an empty mask (no object found in its box)")
        if in_place:  # an empty mask is written too (area 0): the detection was processed
            for det, _ in todo:
                mask, score = results[id(det)]
                x0, y0, x1, y1 = box_pixels(det.bounding_box, width, height)
                det.mask = np.ascontiguousarray(mask[y0:y1, x0:x1])
                det.mask_path = None
                det["predicted_iou"] = score
                det["area"] = int(det.mask.sum())
            self.last_masks = len(todo)
            return detections

        out = []
        for det, _ in todo:
            mask, score = results[id(det)]
            new = self._new_detection(det, mask, score)
            if new is not None:
                out.append(new)
        self.last_masks = len(out)
        return fol.Detections(detections=out)

    def keypoints(self, image: np.ndarray, keypoints: "fol.Keypoints") -> "fol.Detections":
        """One mask per Keypoint (all its points prompt one object; single points use SAM's
        three-mask output and keep the best, as SAM recommends for ambiguous prompts)."""
        height, width = image.shape[:2]
        prompts = []
        self.last_problems = []
        for kp in keypoints.keypoints:
            try:
                prompt = point_prompt(kp, width, height, self.point_labels_attr)
            except samkit.PromptError as exc:  # this keypoint only; the others still get masks
                self.last_problems.append(str(exc))
                continue
            if prompt is None:
                self.last_problems.append(f"{_named('keypoint', kp)} has no visible point (all are NaN)")
            else:
                prompts.append((kp, prompt))
        out = []
        points = [samkit.Prompt(coords, labels) for _, (coords, labels) in prompts]
        found = samkit.segment_objects(self.predictor, points, image if prompts else None, stability=False)
        for (kp, _), obj in zip(prompts, found):
            new = self._new_detection(kp, obj.mask, obj.score)
            if new is None:
                self.last_problems.append(
                    f"{_named('keypoint', kp)} gave an empty mask (no object found at its points)"
                )
            else:
                out.append(new)
        self.last_masks = len(out)
        return fol.Detections(detections=out)

    def _new_detection(self, prompt: "fol.Label", mask: np.ndarray, score: float) -> Optional["fol.Detection"]:
        crop = tight_crop(mask)
        if crop is None:
            return None
        box, cropped = crop
        attributes = _copy_prompt(prompt)
        if getattr(prompt, "confidence", None) is not None and not isinstance(prompt.confidence, list):
            attributes["prompt_confidence"] = prompt.confidence
        attributes.update(
            bounding_box=box,
            mask=cropped,
            confidence=confidence_of(score),
            predicted_iou=score,
            area=int(cropped.sum()),
            prompt_id=prompt.id,
        )
        return fol.Detection(**attributes)
