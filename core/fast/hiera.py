"""The fast Hiera trunk: inference over a plain `Hiera`'s weights (it owns none), the same stage
outputs to float32 rounding, in fewer passes over memory.

The plain trunk (samkit.modeling.backbones.hiera) runs the official operations one by one. This
engine keeps the arithmetic and removes passes over memory:

- every linear layer is one oneDNN product with its bias, the MLP's first layer also with its
  GELU, the attention projection and the MLP's second layer with their residual sum
  (fast/fused.py);
- the attention output goes from windows of heads to the token grid in one copy (the plain
  trunk merges the heads, then the windows);
- the positional embedding (a bicubic resize of the background grid) is kept per grid size
  until the weights change.

It serves float32 inference on a CPU whose torch has oneDNN, and a bfloat16 autocast there
(fast/fused.py: products in bfloat16, the residual stream in float32); never while autograd
records, nor for other devices or dtypes (`for_trunk` and `precision` say when), where the caller
runs the plain trunk. Training, export and the parity tests against the official sam2 can ask
for the plain trunk (`Sam2.embed(..., reference=True)`); tests/core/test_fast_hiera.py holds
the two together.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.backbones.hiera import Hiera, MultiScaleBlock, pool_tokens, window_partition
from .fused import FusedLinears, engine_precision, fused_linear_available, layer_norm, sources


class KeptPositionEmbedding(NamedTuple):
    """The trunk's positional embedding for one token grid, and the parameters' memory and
    version counters it was computed from."""

    grid: tuple[int, int]
    sources: tuple[tuple[int, int], ...]
    embedding: torch.Tensor  # (1, H, W, C)


class FastHiera(FusedLinears):
    """Callable like the plain trunk: (B, 3, H, W) float32 -> the stage outputs (B, C_i, H_i, W_i),
    highest resolution first, from ``trunk``'s weights.

    In float32 the outputs are the plain trunk's to float32 rounding. Under a bfloat16 autocast
    the products, the attention and the patch embedding run in bfloat16 as autocast runs them,
    but the residual stream stays float32 (autocast's becomes bfloat16 from the second stage on,
    where a bfloat16 product meets a bfloat16 shortcut): about half the plain trunk's error under
    autocast, and float32 outputs."""

    def __init__(self, trunk: Hiera) -> None:
        super().__init__()
        self.trunk = trunk
        self._kept_pos: KeptPositionEmbedding | None = None

    def __getstate__(self) -> dict:
        return {"trunk": self.trunk, "_kept_pos": None, "_kept_bf16": {}}

    @classmethod
    def for_trunk(cls, trunk: nn.Module) -> FastHiera | None:
        """An engine for this trunk, or None when it is not a plain Hiera or this torch has no oneDNN."""
        if type(trunk) is not Hiera or not all(type(b) is MultiScaleBlock for b in trunk.blocks):
            return None
        return cls(trunk) if fused_linear_available() else None

    def precision(self, x: torch.Tensor) -> torch.dtype | None:
        """The precision the engine computes this input in (fast/fused.py, ``engine_precision``):
        float32, bfloat16 under a bfloat16 CPU autocast, or None for the plain trunk."""
        return engine_precision(x, self.trunk.pos_embed.dtype)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        trunk = self.trunk
        found = sources(trunk.pos_embed, trunk.pos_embed_window)
        kept = self._kept_pos
        if kept is None or kept.grid != (height, width) or kept.sources != found:
            kept = KeptPositionEmbedding((height, width), found, trunk.position_embedding(height, width).contiguous())
            self._kept_pos = kept
        return kept.embedding

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        dtype = self.precision(x)
        trunk = self.trunk
        height, width = x.shape[-2:]
        if dtype is None or height % trunk.input_multiple or width % trunk.input_multiple:
            return trunk(x)  # the plain trunk (and its error for a wrong size)
        # the engine does its own casts: autocast would turn the residual stream to bfloat16
        with torch.autocast("cpu", enabled=False):
            patch = trunk.patch_embed.proj
            weight, bias = self.weights(patch, dtype)
            x = F.conv2d(x.to(dtype), weight, bias, patch.stride, patch.padding).permute(0, 2, 3, 1)
            x = x + self.position_embedding(x.shape[1], x.shape[2])  # a contiguous float32 grid
            outputs = []
            for i, block in enumerate(trunk.blocks):
                x = self.block(block, x, dtype)
                if i in trunk.stage_ends:
                    outputs.append(x.permute(0, 3, 1, 2))
        return outputs

    def block(self, block: MultiScaleBlock, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """One MultiScaleBlock on a contiguous float32 (B, H, W, C) grid, as its forward computes
        it, the products in ``dtype``."""
        normed = layer_norm(x, block.norm1, dtype)
        shortcut = x
        if block.proj is not None:
            shortcut = self.linear(normed, block.proj).float()
            if block.q_stride is not None:
                shortcut = pool_tokens(shortcut, block.q_stride).contiguous()
        attended = self.attention(block, normed, shortcut.shape[1], shortcut.shape[2])
        x = self.linear_add(attended, block.attn.proj, shortcut)
        hidden = self.linear(layer_norm(x, block.norm2, dtype), block.mlp.layers[0], "gelu")
        return self.linear_add(hidden, block.mlp.layers[1], x)

    def attention(self, block: MultiScaleBlock, normed: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
        """The block's attention before its output projection: (B, out_h, out_w, dim_out), contiguous,
        in normed's precision."""
        attn = block.attn
        b = normed.shape[0]
        window = block.window_size
        tokens = window_partition(normed, window) if window > 0 else normed
        n, wh, ww, _ = tokens.shape
        heads = attn.num_heads
        q, k, v = self.linear(tokens, attn.qkv).reshape(n, wh * ww, 3, heads, -1).unbind(2)
        if attn.q_stride is not None:
            q = pool_tokens(q.reshape(n, wh, ww, -1), attn.q_stride)
            wh, ww = q.shape[1:3]
            q = q.reshape(n, wh * ww, heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        head_dim = out.shape[-1]
        if window == 0:
            return out.transpose(1, 2).reshape(b, out_h, out_w, heads * head_dim)
        # (windows, heads, tokens, head_dim) -> the (padded) grid of tokens in one copy
        nh, nw = -(-out_h // wh), -(-out_w // ww)
        grid = out.new_empty(b, nh * wh, nw * ww, heads * head_dim)
        grid.view(b, nh, wh, nw, ww, heads, head_dim).copy_(
            out.view(b, nh, nw, heads, wh, ww, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        )
        if grid.shape[1] != out_h or grid.shape[2] != out_w:
            grid = grid[:, :out_h, :out_w].contiguous()  # the padding cropped away
        return grid
