"""The fast ViT image encoder of SAM 1 (ViT-B/L/H): inference over a plain `ImageEncoderViT`'s
weights (it owns none), the same embedding to float32 rounding, in fewer passes over memory.

The plain encoder (samkit.modeling.backbones.vit) keeps its own attention (decomposed relative
positions, the bias built a slice of queries at a time); this engine computes the same attention
without building the bias (`attend` below) and the rest of each block with the fused products of
fast/fused.py:
the bias in every product, GELU in the MLP's first, the residual sums in the attention
projection and the MLP's second. The windowed attention's output is projected after the windows
are merged (the projection is per token, so the order does not matter), with the residual added
in the same product.

It serves float32 inference on a CPU whose torch has oneDNN, and a bfloat16 autocast there
(products in bfloat16, the residual stream in float32); the convolutional neck then runs as the
caller's autocast says. Never while autograd records, nor for other devices or dtypes
(`for_encoder` and `precision` say when): the caller runs the plain encoder then, and can ask for
it (`Sam.embed_image(..., reference=True)`). tests/core/test_fast_vit.py holds the two together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.backbones.vit import (
    Attention,
    Block,
    ImageEncoderViT,
    bias_chunks,
    relative_position_terms,
    window_partition,
    window_unpartition,
)
from .fused import FusedLinears, engine_precision, fused_linear_available, layer_norm


# heads per slice of the global attention (benchmarks/RESULTS.md, "Design measurements")
HEADS_PER_SLICE = 4


class FastViT(FusedLinears):
    """Callable like the plain encoder: (B, 3, H, W) float32 -> the embedding (B, 256, H/16, W/16)."""

    def __init__(self, encoder: ImageEncoderViT) -> None:
        super().__init__()
        self.encoder = encoder

    def __getstate__(self) -> dict:
        return {"encoder": self.encoder, "_kept_bf16": {}}

    @classmethod
    def for_encoder(cls, encoder: nn.Module) -> FastViT | None:
        """An engine for this encoder, or None when it is not the plain ViT (blocks, attention and
        an erf GELU as built) or this torch has no oneDNN."""
        if type(encoder) is not ImageEncoderViT or not fused_linear_available():
            return None
        for block in encoder.blocks:
            if type(block) is not Block or type(block.attn) is not Attention:
                return None
            if type(block.mlp.act) is not nn.GELU or block.mlp.act.approximate != "none":
                return None
        return cls(encoder)

    def precision(self, x: torch.Tensor) -> torch.dtype | None:
        """float32, bfloat16 under a bfloat16 CPU autocast, or None for the plain encoder."""
        return engine_precision(x, self.encoder.pos_embed.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.precision(x)
        if dtype is None:
            return self.encoder(x)
        return self.encoder.neck(self.tokens(x, dtype).permute(0, 3, 1, 2))

    def tokens(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The blocks' output grid (B, H/16, W/16, C), float32, before the neck."""
        encoder = self.encoder
        # the engine does its own casts: autocast would turn the residual stream to bfloat16
        with torch.autocast("cpu", enabled=False):
            patch = encoder.patch_embed.proj
            weight, bias = self.weights(patch, dtype)
            x = F.conv2d(x.to(dtype), weight, bias, patch.stride, patch.padding).permute(0, 2, 3, 1)
            x = x + encoder.pos_embed  # a contiguous float32 grid
            for block in encoder.blocks:
                x = self.block(block, x, dtype)
        return x

    def block(self, block: Block, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """One Block on a contiguous float32 (B, H, W, C) grid, as its forward computes it, the
        products in ``dtype``."""
        normed = layer_norm(x, block.norm1, dtype)
        if block.window_size > 0:
            height, width = x.shape[1:3]
            windows, padded = window_partition(normed, block.window_size)
            attended = attend(block.attn, self.linear(windows, block.attn.qkv))
            attended = window_unpartition(attended, block.window_size, padded, (height, width))
        else:
            attended = attend(block.attn, self.linear(normed, block.attn.qkv))
        x = self.linear_add(attended.contiguous(), block.attn.proj, x)
        hidden = self.linear(layer_norm(x, block.norm2, dtype), block.mlp.lin1, "gelu")
        return self.linear_add(hidden, block.mlp.lin2, x)


def attend(attention: Attention, qkv: torch.Tensor) -> torch.Tensor:
    """What ``Attention.attend`` computes, (B, H, W, 3C) -> (B, H, W, C), with fewer passes over
    the logits: per slice of queries, the logits in one reused buffer, softmax in place, then the
    product with v.

    The plain attention builds each slice's bias as a new tensor (laid out by the broadcast, so
    that its reshape copies it again), which the product then copies into its output. Here the
    two relative-position terms reach the logits without a bias tensor:

    * small grids (windows): inside the product. Each query gets its H vertical and W horizontal
      terms as extra features, each key the one-hot of its row and its column, so that
      q' . k' = q . k / sqrt(d) + vertical[row(k)] + horizontal[col(k)]. Adding them afterwards
      would take two passes whose innermost loops are only W long;
    * large grids (global attention): added in place, two passes over the buffer, where H + W
      more features would cost more arithmetic than the passes.

    benchmarks/RESULTS.md ("Design measurements") has the measurements."""
    batch, height, width, _ = qkv.shape
    tokens, heads = height * width, attention.num_heads
    q, k, v = qkv.reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    dim = q.shape[-1]
    rel_h, rel_w = relative_position_terms(q, attention.rel_pos_h, attention.rel_pos_w, (height, width))
    in_product = height + width <= dim
    if in_product:
        q = torch.cat([q * dim**-0.5, rel_h.reshape(batch, heads, tokens, height),
                       rel_w.reshape(batch, heads, tokens, width)], dim=-1)
        key = torch.arange(tokens, device=qkv.device)
        one_hot = torch.cat([key[:, None] // width == torch.arange(height, device=qkv.device),
                             key[:, None] % width == torch.arange(width, device=qkv.device)], dim=-1)
        k = torch.cat([k, one_hot.to(k.dtype).expand(batch, heads, tokens, height + width)], dim=-1)
    else:
        q = q * dim**-0.5  # (B, heads, HW, d), contiguous
    features = q.shape[-1]
    k_t, v = k.transpose(2, 3).contiguous(), v.contiguous()
    out = qkv.new_empty(batch, tokens, heads, dim)
    # slices of a few heads and more query rows (the same logits size): each head's keys and
    # values stay in the per-core cache for more queries
    head_step = heads if in_product else min(heads, HEADS_PER_SLICE)
    batch_step, row_step = bias_chunks(batch, head_step, height, width, q.element_size())
    if head_step < heads:
        batch_step = 1
    buffer = qkv.new_empty(min(batch_step, batch) * head_step * min(row_step, height) * width * tokens)
    for b0 in range(0, batch, batch_step):
        b1 = min(b0 + batch_step, batch)
        for h0 in range(0, heads, head_step):
            h1 = min(h0 + head_step, heads)
            for r0 in range(0, height, row_step):
                r1 = min(r0 + row_step, height)
                rows = slice(r0 * width, r1 * width)
                count, length = (b1 - b0) * (h1 - h0), (r1 - r0) * width
                logits = buffer[: count * length * tokens].view(count, length, tokens)
                torch.bmm(q[b0:b1, h0:h1, rows].reshape(count, length, features),
                          k_t[b0:b1, h0:h1].reshape(count, features, tokens), out=logits)
                if not in_product:
                    grid = logits.view(b1 - b0, h1 - h0, r1 - r0, width, height, width)
                    grid.add_(rel_h[b0:b1, h0:h1, r0:r1, :, :, None])
                    grid.add_(rel_w[b0:b1, h0:h1, r0:r1, :, None, :])
                torch.ops.aten._softmax.out(logits, -1, False, out=logits)
                attended = torch.bmm(logits, v[b0:b1, h0:h1].reshape(count, tokens, dim))
                out[b0:b1, rows, h0:h1] = attended.view(b1 - b0, h1 - h0, length, dim).transpose(1, 2)
    return out.view(batch, height, width, heads * dim)
