"""SAM 2's feature pyramid neck: the trunk's stage outputs projected to one width, with top-down
fusion on the low-resolution levels.

Every level gets a 1x1 lateral convolution to ``d_model`` channels. Going from the lowest
resolution up, a level listed in ``top_down_levels`` adds the level below it, upsampled 2x with
nearest-neighbour interpolation; the other levels are their lateral projection alone. SAM 2.1
fuses levels 2 and 3 only: its 64x64 embedding sees the 32x32 stage, the 256x256 and 128x128
maps are plain projections of the first two stages.

No output convolution and no positional encoding: the image path of SAM 2 never reads the
neck's sine encodings (only the video memory does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Lateral(nn.Module):
    """The 1x1 projection of one level (a module of its own for the checkpoints' ``convs.N.conv`` keys)."""

    def __init__(self, in_channels: int, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, d_model, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FpnNeck(nn.Module):
    """Trunk levels (highest resolution first) in, as many ``d_model``-channel maps out, same order.

    ``backbone_channel_list`` lists the trunk's widths lowest resolution first, as the official
    configs do; ``convs[j]`` projects that entry, i.e. trunk level ``n - 1 - j``.
    """

    def __init__(
        self,
        backbone_channel_list: list[int] | tuple[int, ...],
        d_model: int = 256,
        top_down_levels: tuple[int, ...] = (2, 3),
    ) -> None:
        super().__init__()
        self.backbone_channel_list = list(backbone_channel_list)
        self.d_model = d_model
        self.top_down_levels = tuple(top_down_levels)
        self.convs = nn.ModuleList(Lateral(dim, d_model) for dim in self.backbone_channel_list)

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(self.convs)
        if len(levels) != n:
            raise ValueError(f"the neck takes {n} trunk levels, got {len(levels)}")
        out: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
        below = None  # the fused map of the level below (lower resolution)
        for i in range(n - 1, -1, -1):
            lateral = self.convs[n - 1 - i](levels[i])
            if i in self.top_down_levels and below is not None:
                # upsampled in float32 as the official neck does (it matters under autocast only)
                up = F.interpolate(below.float(), scale_factor=2.0, mode="nearest")
                lateral = lateral + up
            out[i] = lateral
            below = lateral
        return out
