"""Hiera, the image trunk of SAM 2 / 2.1: a hierarchical ViT.

A (B, 3, H, W) image becomes four feature maps, one per stage, at strides 4, 8, 16 and 32 (256,
128, 64 and 32 cells a side for a 1024 input), with the channels doubling from stage to stage.

- A 7x7 stride-4 convolution makes the tokens (channels last, (B, H/4, W/4, C)).
- A positional embedding is added: a small "background" grid, bicubically resized to the token
  grid, plus one window-sized embedding tiled over it (the windowed positional embedding of
  https://arxiv.org/abs/2311.05613).
- Every block is pre-norm attention + pre-norm MLP. Most blocks attend within non-overlapping
  windows (the grid zero-padded at the bottom/right to a multiple of the window); the blocks in
  ``global_att_blocks`` attend over the whole grid.
- The first block of stages 2-4 halves the grid: it max-pools the queries (2x2) inside each
  window, projects the residual to the wider width and pools it the same way. That block still
  uses the previous stage's window size, so its pooled windows are half that size.

The module names and parameter shapes are those of the official ``sam2`` checkpoints'
``image_encoder.trunk.*`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HieraConfig:
    """One Hiera size. Defaults are those of the base-plus trunk (the official ``Hiera`` defaults)."""

    embed_dim: int = 112
    num_heads: int = 2
    stages: tuple[int, ...] = (2, 3, 16, 3)  # blocks per stage
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)  # attention window per stage
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    q_pool: int = 3  # how many stage changes pool the queries
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0

    @property
    def stage_ends(self) -> list[int]:
        """Index of the last block of each stage."""
        ends, total = [], 0
        for n in self.stages:
            total += n
            ends.append(total - 1)
        return ends

    @property
    def stage_dims(self) -> list[int]:
        """Output channels of each stage, highest resolution first."""
        return [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]


HIERA_CONFIGS: dict[str, HieraConfig] = {
    "tiny": HieraConfig(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "small": HieraConfig(
        embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
    "base_plus": HieraConfig(),
    "large": HieraConfig(
        embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8), window_pos_embed_bkg_spatial_size=(7, 7),
    ),
}


class BlockSpec(NamedTuple):
    """What one Hiera block is: widths in and out, heads, window (0 = global), query pooling."""

    dim: int
    dim_out: int
    num_heads: int
    window_size: int
    pool: bool


def plan_blocks(config: HieraConfig) -> list[BlockSpec]:
    """The blocks of a Hiera, in order.

    The first block of a new stage widens the channels and the heads and (for the first
    ``q_pool`` stage changes) pools the queries, but keeps the window size of the stage before.
    """
    stage_ends = config.stage_ends
    pool_blocks = {end + 1 for end in stage_ends[:-1][: config.q_pool]}
    specs = []
    dim, heads, stage = config.embed_dim, config.num_heads, 0
    for i in range(sum(config.stages)):
        window = 0 if i in config.global_att_blocks else config.window_spec[stage]
        dim_out = dim
        if i - 1 in stage_ends:  # first block of the next stage
            dim_out = int(dim * config.dim_mul)
            heads = int(heads * config.head_mul)
            stage += 1
        specs.append(BlockSpec(dim, dim_out, heads, window, i in pool_blocks))
        dim = dim_out
    return specs


def pool_tokens(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Max-pool a channels-last grid (B, H, W, C) by ``stride`` (floor of odd sizes)."""
    pooled = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride)
    return pooled.permute(0, 2, 3, 1)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nH * nW, window, window, C), zero-padding H and W up to multiples of window."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    nh, nw = (h + pad_h) // window, (w + pad_w) // window
    x = x.view(b, nh, window, nw, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * nh * nw, window, window, c)


def window_unpartition(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of ``window_partition`` for a (height, width) grid: the padding is cropped away."""
    nh, nw = -(-height // window), -(-width // window)
    b = windows.shape[0] // (nh * nw)
    x = windows.reshape(b, nh, nw, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, nh * window, nw * window, -1)
    return x[:, :height, :width]


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention on a (B, H, W, C) grid, the queries optionally max-pooled by
    ``q_stride`` (then the output grid is the pooled one). Keys and values are never pooled."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)  # output laid out as (3, heads, head_dim)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).unbind(2)  # each (B, N, heads, hd)
        if self.q_stride is not None:
            q = pool_tokens(q.reshape(b, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class HieraMLP(nn.Module):
    """Linear -> GELU -> Linear (keys ``layers.0`` and ``layers.1``, as in the checkpoints)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden_dim), nn.Linear(hidden_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](F.gelu(self.layers[0](x)))


class MultiScaleBlock(nn.Module):
    """One Hiera block: (windowed or global) attention with optional query pooling, then an MLP."""

    def __init__(self, spec: BlockSpec, q_stride: tuple[int, int], mlp_ratio: float) -> None:
        super().__init__()
        self.window_size = spec.window_size
        self.q_stride = q_stride if spec.pool else None
        self.norm1 = nn.LayerNorm(spec.dim, eps=1e-6)
        self.attn = MultiScaleAttention(spec.dim, spec.dim_out, spec.num_heads, self.q_stride)
        self.norm2 = nn.LayerNorm(spec.dim_out, eps=1e-6)
        self.mlp = HieraMLP(spec.dim_out, int(spec.dim_out * mlp_ratio))
        # the residual changes width at the first block of a stage
        self.proj = nn.Linear(spec.dim, spec.dim_out) if spec.dim != spec.dim_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out); H' = H / 2 where the block pools."""
        normed = self.norm1(x)
        shortcut = x
        if self.proj is not None:
            # the widened residual is projected from the normed input, then pooled like the queries
            shortcut = self.proj(normed)
            if self.q_stride is not None:
                shortcut = pool_tokens(shortcut, self.q_stride)
        out_h, out_w = shortcut.shape[1:3]

        if self.window_size > 0:
            windows = window_partition(normed, self.window_size)
            out = self.attn(windows)
            # pooled windows are smaller by the stride; they tile the pooled grid
            out_window = out.shape[1]
            out = window_unpartition(out, out_window, out_h, out_w)
        else:
            out = self.attn(normed)

        x = shortcut + out
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution: (B, 3, H, W) -> tokens (B, H/4, W/4, C)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The Hiera trunk. ``forward`` returns the feature map of every stage, (B, C_i, H_i, W_i),
    highest resolution first."""

    def __init__(self, config: HieraConfig | None = None) -> None:
        super().__init__()
        config = config or HieraConfig()
        self.config = config
        self.patch_embed = PatchEmbed(config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, *config.window_pos_embed_bkg_spatial_size))
        first_window = config.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, config.embed_dim, first_window, first_window))
        self.blocks = nn.ModuleList(
            MultiScaleBlock(spec, config.q_stride, config.mlp_ratio) for spec in plan_blocks(config)
        )
        self.stage_ends = config.stage_ends
        self.channel_list = config.stage_dims[::-1]  # lowest resolution first, as the FPN neck lists them
        # Input sides must give a token grid that the tiled window embedding covers exactly.
        self.input_multiple = 4 * first_window

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """(1, height, width, C): the background resized bicubically plus the tiled window embedding."""
        window = self.pos_embed_window.shape[-1]
        background = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic", align_corners=False)
        tiled = self.pos_embed_window.tile(1, 1, height // window, width // window)
        return (background + tiled).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        height, width = x.shape[-2:]
        if height % self.input_multiple or width % self.input_multiple:
            raise ValueError(
                f"Hiera needs an input whose sides are multiples of {self.input_multiple}, got {height}x{width}"
            )
        x = self.patch_embed(x)
        x = x + self.position_embedding(x.shape[1], x.shape[2])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
