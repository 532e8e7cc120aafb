"""``SamModel``: samkit SAM as a FiftyOne model, for ``dataset.apply_model``.

Implements ``fiftyone.core.models.Model`` with ``SamplesMixin`` (so a prompt field can be
passed) and deliberately not ``TorchModelMixin``: that would move ``apply_model`` onto FiftyOne's
torch DataLoader path, which imports torchvision. Images arrive as FiftyOne reads them (uint8
RGB arrays, any size), so ``transforms`` is None and batches may be ragged lists.

::

    from samkit.fiftyone import SamModel

    model = SamModel(model="mobile_sam", points_per_side=16)
    dataset.apply_model(model, "sam_everything")                       # segment everything
    dataset.apply_model(model, "sam_masks", prompt_field="detections")  # boxes -> masks
    dataset.apply_model(model, "sam_masks", prompt_field="keypoints")   # points -> masks
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

import eta.core.config as etac

import fiftyone.core.labels as fol
import fiftyone.core.models as fom

import samkit

from samkit.fiftyone.segmenter import (
    DEFAULT_BOX_BATCH_SIZE,
    DEFAULT_POINT_LABELS_ATTR,
    EVERYTHING_DEFAULTS,
    Segmenter,
    describe_problems,
)

logger = logging.getLogger(__name__)


class SamModelConfig(etac.Config):
    """Configuration of :class:`SamModel` (a dict in, as FiftyOne model configs are).

    Keys: ``model`` (name, checkpoint path; default ``$SAMKIT_CHECKPOINT``, else ``$SAMKIT_MODEL``,
    else mobile_sam), ``device``, ``dtype`` (float32, bfloat16, float16), the segment-everything
    options ``points_per_side``, ``points_per_batch``, ``pred_iou_thresh``, ``stability_score_thresh``,
    ``box_nms_thresh``, ``crop_n_layers``, ``min_mask_region_area`` (``samkit.GeneratorOptions``'
    names and defaults; ``pred_iou_thresh`` None: the model family's), ``max_masks``; for prompts ``box_batch_size`` and
    ``point_labels_attr``; ``confidence_thresh`` (drop masks below this predicted IoU).
    """

    def __init__(self, d: Optional[dict] = None) -> None:
        d = dict(d or {})
        known = {"model", "device", "dtype", "max_masks", "box_batch_size", "point_labels_attr", "confidence_thresh",
                 *EVERYTHING_DEFAULTS}
        unknown = sorted(set(d) - known)
        if unknown:
            raise samkit.SamkitError(
                f"unknown SamModel option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        self.model = self.parse_string(d, "model", default=None)
        self.device = self.parse_string(d, "device", default=None)
        self.dtype = self.parse_string(d, "dtype", default=None)
        for name, default in EVERYTHING_DEFAULTS.items():
            setattr(self, name, self.parse_number(d, name, default=default))
        self.max_masks = self.parse_number(d, "max_masks", default=None)
        self.box_batch_size = self.parse_number(d, "box_batch_size", default=DEFAULT_BOX_BATCH_SIZE)
        self.point_labels_attr = self.parse_string(d, "point_labels_attr", default=DEFAULT_POINT_LABELS_ATTR)
        self.confidence_thresh = self.parse_number(d, "confidence_thresh", default=None)

    @property
    def everything_options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in EVERYTHING_DEFAULTS}


class SamModel(fom.Model, fom.SamplesMixin):
    """SAM / MobileSAM for ``apply_model``: segment everything, or masks from a prompt field.

    ``SamModel(config)`` with a :class:`SamModelConfig`, or ``SamModel(model=..., **options)``.
    With ``prompt_field=`` (a ``Detections`` or ``Keypoints`` field) each prompt gives one
    detection carrying the prompt's label and attributes and ``prompt_id``; without it, every
    object found is one detection. Detections have box-relative masks, ``confidence`` =
    predicted IoU (clamped to [0, 1]), and ``predicted_iou``, ``area`` (and ``stability_score`` when segmenting
    everything) attributes. A sample whose prompt field is empty gets an empty Detections. A
    prompt that cannot be used (a box of zero size or outside the image, keypoint labels that do
    not match its points) gets no mask and a logged warning naming the sample; the others do.
    """

    def __init__(self, config: Optional[SamModelConfig] = None, **options: Any) -> None:
        fom.SamplesMixin.__init__(self)
        if config is None:
            config = SamModelConfig(options)
        elif options:
            raise TypeError("pass either a SamModelConfig or keyword options, not both")
        elif isinstance(config, dict):
            config = SamModelConfig(config)
        self.config = config
        self._preprocess = False
        # Loaded now, as FiftyOne's zoo models are: a wrong checkpoint or an offline download
        # fails here with one error, not once per sample inside apply_model (which skips
        # failing samples by default).
        self._segmenter = Segmenter(
            config.model,
            config.device,
            everything_options=config.everything_options,
            max_masks=config.max_masks,
            box_batch_size=config.box_batch_size,
            point_labels_attr=config.point_labels_attr,
            dtype=config.dtype,
        )

    # -- fiftyone.core.models.Model interface --------------------------------------------------

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        # predict_all takes a plain list of differently sized images (FiftyOne's non-DataLoader
        # batch path passes exactly that), so batching needs no equal sizes.
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = bool(value)

    @property
    def segmenter(self) -> Segmenter:
        return self._segmenter

    @property
    def prompt_field(self) -> Optional[str]:
        fields = self.needs_fields or {}
        name = fields.get("prompt_field") or next(iter(fields.values()), None)
        if name and name.startswith("frames."):
            name = name[len("frames.") :]
        return name or None

    def predict(self, arg: np.ndarray, sample=None) -> "fol.Detections":
        image = samkit.load_image(np.asarray(arg))
        field = self.prompt_field
        if field is None:
            detections = self.segmenter.everything(image)
        else:
            if sample is None:
                raise samkit.PromptError(
                    f"prompt_field={field!r} needs the sample: call predict(img, sample=sample) "
                    "or use dataset.apply_model(model, ..., prompt_field=...)"
                )
            value = sample.get_field(field)
            if value is None:
                detections = fol.Detections()
            elif isinstance(value, (fol.Detections, fol.Keypoints)):
                detections = self.segmenter.prompts(image, value)
                if self.segmenter.last_problems:
                    # apply_model has no error field: the good prompts keep their masks, the
                    # bad ones are reported here
                    logger.warning("samkit: %s", describe_problems(self.segmenter.last_problems, sample.id, field))
            else:
                raise samkit.PromptError(
                    f"prompt field {field!r} of sample {sample.id} holds {type(value).__name__}; SAM "
                    "prompts come from a Detections field (boxes) or a Keypoints field (points)"
                )
        thresh = self.config.confidence_thresh
        if thresh is not None:
            detections.detections = [d for d in detections.detections if (d.confidence or 0) >= thresh]
        return detections

    def predict_all(self, args, samples=None) -> list:
        if samples is None:
            return [self.predict(arg) for arg in args]
        return [self.predict(arg, sample=sample) for arg, sample in zip(args, samples)]
