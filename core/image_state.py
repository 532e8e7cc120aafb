"""What a model keeps of one image between prompts: a small typed record, also stored on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# Bumped whenever what an ImageState holds changes: a cached file of another format is
# recomputed, never misread (EmbeddingCache puts it into the key and checks it on load).
STATE_FORMAT = 2


@dataclass
class ImageState:
    """An image as the decoder sees it.

    features: the image embedding the decoder attends to, (1, 256, 64, 64) float32.
    original_size: (H, W) of the image given.
    input_size: (h, w) of the image inside the model's square input (SAM 1: the longest side
        resized to 1024, the rest padding; SAM 2: the whole square, the image is stretched).
    high_res_features: finer feature maps some families add in the decoder's upscaling, finest
        first (SAM 2: (1, 32, 256, 256) and (1, 64, 128, 128)); empty for SAM 1.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    high_res_features: tuple[torch.Tensor, ...] = field(default=())

    def to_file(self) -> dict[str, Any]:
        """A dict of tensors and lists for torch.save (read back with from_file)."""
        return {
            "format": STATE_FORMAT,
            "features": self.features.cpu(),
            "high_res_features": [t.cpu() for t in self.high_res_features],
            "original_size": list(self.original_size),
            "input_size": list(self.input_size),
        }

    @classmethod
    def from_file(cls, saved: Any) -> ImageState:
        """The state saved by to_file; ValueError for anything else (another format, damage)."""
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise ValueError("not an image state of the current format")
        return cls(
            saved["features"],
            tuple(saved["original_size"]),
            tuple(saved["input_size"]),
            tuple(saved["high_res_features"]),
        )
