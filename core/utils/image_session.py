"""The image a predictor's prompts refer to: what samkit.Predictor and the torch-free
OnnxPredictor share (numpy only)."""

from __future__ import annotations

from typing import Any

from ..errors import SamkitError


class ImageSession:
    """Holds the current image's state (`_state`: an ImageState or OnnxImageState with features,
    original_size (H, W) and input_size (h, w)); set_image / set_image_state are the predictor's."""

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
