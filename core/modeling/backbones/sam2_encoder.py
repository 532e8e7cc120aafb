"""SAM 2's image encoder: the Hiera trunk and the FPN neck, keeping the three highest-resolution
levels (``scalp=1``).

A (B, 3, 1024, 1024) normalised image gives 256-channel maps at 256x256, 128x128 and 64x64
(strides 4, 8 and 16); the last one is the image embedding the mask decoder attends to, the two
others become its high-resolution features. Parameter names are the checkpoints'
``image_encoder.*`` keys.
"""

from __future__ import annotations

import torch
from torch import nn

from .fpn_neck import FpnNeck
from .hiera import HIERA_CONFIGS, Hiera, HieraConfig


class Sam2ImageEncoder(nn.Module):
    """Trunk + neck. ``forward`` returns the kept FPN levels, highest resolution first."""

    img_size = 1024

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        if trunk.channel_list != neck.backbone_channel_list:
            raise ValueError(f"trunk widths {trunk.channel_list} do not match the neck's {neck.backbone_channel_list}")
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck_levels(self.trunk(x))

    def neck_levels(self, trunk_levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The trunk's stage outputs (highest resolution first) -> the kept FPN levels, same order
        (the fast trunk's outputs go through here too)."""
        levels = self.neck(trunk_levels)
        # the lowest-resolution level only feeds the top-down path of the one above it
        return levels[: len(levels) - self.scalp]


def build_sam2_image_encoder(size: str | HieraConfig) -> Sam2ImageEncoder:
    """The SAM 2 / 2.1 image encoder of one Hiera size: "tiny", "small", "base_plus" or "large"."""
    config = HIERA_CONFIGS[size] if isinstance(size, str) else size
    trunk = Hiera(config)
    return Sam2ImageEncoder(trunk, FpnNeck(trunk.channel_list, d_model=256, top_down_levels=(2, 3)), scalp=1)
