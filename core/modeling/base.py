"""What every model family's image model shares: its three networks, its name, the precision it
computes in, and the pixel statistics it normalises with. `Sam` (SAM 1, MobileSAM) and `Sam2`
build on it and add their own pre- and post-processing (the family interface, see Sam)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn


class PromptableModel(nn.Module):
    """image_encoder + prompt_encoder + mask_decoder, named `arch` (a registry name).

    pixel_mean / pixel_std (3 values each, in the family's pixel scale) are buffers that move with
    the model and are not saved (official checkpoints do not hold them). Weights stay in float32;
    `compute_dtype` is the precision the networks run in under `autocast()`."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module, arch: str,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.arch = arch
        self.compute_dtype = torch.float32
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def mask_scale(self) -> int:
        """Input-frame pixels per low-res mask pixel (1024 / 256 = 4)."""
        return self.image_size // self.prompt_encoder.mask_input_size[1]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context in which the networks run at `compute_dtype`; a no-op for float32."""
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)
