"""The image a predictor's prompts refer to, and predict / predict_batch on it: what
samkit.Predictor and the torch-free OnnxPredictor share (numpy only)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..errors import SamkitError
from .prompts import PromptBatch, check_prompt, check_prompts


class DecodeOutput(NamedTuple):
    """What a prediction returns: three masks or one, logits or booleans, only the best-scoring
    mask, and whether the low-res logits are kept (see ImageSession.predict)."""

    multimask_output: bool
    return_logits: bool
    best_only: bool = False
    return_low_res: bool = True


class ImageSession:
    """Holds the current image's state (`_state`: an ImageState or OnnxImageState with features,
    original_size (H, W) and input_size (h, w)) and checks prompts against it; set_image /
    set_image_state and `_decode` (checked prompts -> masks) are the predictor's."""

    _state: Any = None

    @property
    def current_state(self) -> Any:
        """The current image's state, or None when no image is set."""
        return self._state

    def reset_image(self) -> None:
        """Forget the current image (a cached embedding stays cached)."""
        self._state = None

    @property
    def is_image_set(self) -> bool:
        return self._state is not None

    @property
    def original_size(self) -> tuple[int, int]:
        return self._require_state().original_size

    @property
    def input_size(self) -> tuple[int, int]:
        return self._require_state().input_size

    def get_image_embedding(self) -> Any:
        """The current image's embedding, (1, 256, 64, 64): a torch tensor for Predictor, a
        float32 ndarray for OnnxPredictor."""
        return self._require_state().features

    def _require_state(self) -> Any:
        if self._state is None:
            raise SamkitError("no image set: call predictor.set_image(image) before predicting")
        return self._state

    # -- prompts -----------------------------------------------------------------------------
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        best_only: bool = False,
        return_low_res: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Masks for one object.

        point_coords (N, 2) XY pixels with point_labels (N,) 1 = foreground, 0 = background;
        box (4,) XYXY pixels; mask_input (1, 256, 256) low-res logits of an earlier call.
        Returns masks (C, H, W) bool (float32 logits with return_logits), scores (C,) and
        low-res logits (C, 256, 256), bounded as the family's official predictor bounds them
        (SAM 2: +-32, after the masks were upscaled from the unbounded ones); C is 3 with
        multimask_output, else 1. best_only keeps only the highest-scoring of the masks (C = 1),
        and only that one is upscaled: what an interactive click needs, a few ms sooner.
        return_low_res=False returns None for the low-res logits and skips their rows and columns
        that cover only the padding below or right of a non-square image (~1/3 of the decoder's
        upscaling for a 3:2 photo).
        """
        state = self._require_state()
        prompts = check_prompt(state.original_size, point_coords, point_labels, box, mask_input)
        output = DecodeOutput(multimask_output, return_logits, best_only, return_low_res)
        masks, scores, low_res = self._decode(prompts, output, state)
        return masks[0], scores[0], None if low_res is None else low_res[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        multimask_output: bool = False,
        return_logits: bool = False,
        return_low_res: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Masks for B objects at once: point_coords (B, N, 2) + point_labels (B, N) and/or boxes (B, 4).

        Returns masks (B, C, H, W), scores (B, C), low-res logits (B, C, 256, 256) (None with
        return_low_res=False, as in predict).
        """
        state = self._require_state()
        prompts = check_prompts(state.original_size, point_coords, point_labels, boxes)
        output = DecodeOutput(multimask_output, return_logits, best_only=False, return_low_res=return_low_res)
        return self._decode(prompts, output, state)

    def _decode(
        self, prompts: PromptBatch, output: DecodeOutput, state: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Checked prompts for B objects in image pixels -> masks (B, C, H, W) at the image size,
        scores (B, C) and low-res logits (B, C, 256, 256) (None unless output.return_low_res)."""
        raise NotImplementedError
