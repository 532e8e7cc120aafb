"""The decoder's image tokens in factored form: what the later attentions and the upscaling use
instead of multiplying every prompt's 4096 x 256 image tokens by a weight.

The plain computation is in samkit.modeling.transformer: each TwoWayAttentionBlock ends with
keys = norm4(keys + cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries)), and
later attentions (and the mask decoder's first transposed convolution) multiply those keys by a
weight. The image-to-token attention's output is attn^T @ projected (fast/transformer.py,
image_to_tokens): so each block changes the image tokens by a rank-M update (M = heads * tokens
~ 56) followed by a layer norm: keys_out = norm(keys_in + attn^T @ projected). A layer norm is a
per-token shift and scale followed by a per-channel gain and bias, so for any weight W (C, D):

    norm(x) @ W = rstd * (x @ (g * W) - mean * colsum(g * W)) + bias @ W

Unrolled through the blocks, the image tokens after k blocks times W are

    scale * (keys_0 @ (g_1 * ... * g_k * W)) + left^T @ right(W) + constant(W)

with keys_0 the shared input image tokens, scale (per token) the product of the norms' rstd,
left (K, N) the blocks' attention weights and per-token statistics (K = k * (M + 1) + k - 1
rows), and right(W) (K, D) the blocks' projected values times the gain-scaled W. The first term's
product is computed once per image (FactoredWeight.image_part); per prompt only rank-K products
remain. Attention that reads these tokens applies it per head: a head's queries meet
image_part's 16 columns of that head and right(W)'s, never an N x D projection per prompt.
The result agrees with the direct product to float32 rounding (tests/core/test_decoder_parity.py).
It subtracts large terms, which bf16 would not resolve: under autocast, and while autograd
records, the decoder takes the direct products. The reduced-precision mode (fast/mask_decoder.py,
image_side_dtype) reads only the upscaling's first convolution in this form, its image part
computed in float32 and stored in bfloat16, its low-rank product in bfloat16; its masks are held
to float32's in tests/core/test_reduced_precision_decoder.py.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn


class KeysUpdate(NamedTuple):
    """How one block changed the image tokens: keys_out = norm4(keys_in + attn^T @ projected),
    attn (B, M, N) the image-to-token attention over M = heads * tokens columns, projected
    (B, M, C) the values through v_proj and out_proj, and the norm's per-token mean and 1/std
    (B, N, 1)."""

    attn: torch.Tensor
    projected: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor


class FactorLevel(NamedTuple):
    """One block's term of a FactoredWeight: the weight scaled by the gains of this block's norm
    and of the later ones, g_j * ... * g_k * W (C, D); its column sums (D,), which multiply the
    norm's per-token mean; and this norm's bias times the weight as the later norms left it
    (D,): the bias enters after this norm, so only the later norms' scales reach it."""

    weight: torch.Tensor
    column_sums: torch.Tensor
    bias_term: torch.Tensor


class FactoredWeight(NamedTuple):
    """A weight W (C, D) and bias applied to the image tokens after k blocks, prepared once per
    image: image_part (N, D) = keys_0 @ (g_1 * ... * g_k * W); constant (D,): the bias and the
    last norm's bias times W, which reach the output unscaled (for `times`, also a per-token
    constant (N, D): SAM 2 adds its stride-8 features to the first upscaling's output there);
    levels, one per block from the last back to the first (FactorLevel)."""

    image_part: torch.Tensor
    constant: torch.Tensor
    levels: list[FactorLevel]

    def to(self, dtype: torch.dtype) -> FactoredWeight:
        """The same in another dtype: the reduced-precision mode's, whose per-prompt low-rank
        product then runs in bfloat16."""
        if self.image_part.dtype == dtype:
            return self
        levels = [FactorLevel(*(t.to(dtype) for t in level)) for level in self.levels]
        return FactoredWeight(self.image_part.to(dtype), self.constant.to(dtype), levels)


def add_batched_product_(out: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """out (B, M, N) += left (B, M, K) @ right (B, K, N), in place. On a CPU torch's baddbmm_
    computes into a temporary and copies it into out (a 4 MB copy for one prompt's image
    tokens); one addmm_ per prompt writes into out directly. Elsewhere, and for large batches,
    baddbmm_."""
    if out.device.type != "cpu" or out.shape[0] > 8:
        return out.baddbmm_(left, right)
    for out_one, left_one, right_one in zip(out, left, right):
        out_one.addmm_(left_one, right_one)
    return out


def factor_weight(
    keys: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, norms: Sequence[nn.LayerNorm]
) -> FactoredWeight:
    """keys (N, C) the shared input image tokens, weight (C, D), bias (D,) or None, norms the
    norm4 of the blocks the tokens have passed -> the per-image part of (tokens @ W + bias)."""
    constant = bias if bias is not None else weight.new_zeros(weight.shape[1])
    levels = []
    for i, norm in enumerate(reversed(norms)):
        bias_term = norm.bias @ weight
        if i == 0:
            constant = constant + bias_term
        weight = norm.weight[:, None] * weight
        levels.append(FactorLevel(weight, weight.sum(0), bias_term))
    return FactoredWeight(keys @ weight, constant, levels)


class FactoredKeys(NamedTuple):
    """The image tokens of B prompts after k blocks, as far as they differ per prompt: left
    (B, K, N), written transposed so that each row (attention weights or per-token scales over
    the N image tokens) is contiguous, scale (B, 1, N), and the blocks' updates, first first."""

    left: torch.Tensor
    scale: torch.Tensor
    updates: list[KeysUpdate]

    def right(self, weight: FactoredWeight) -> torch.Tensor:
        """The (B, K, D) factor that `left` multiplies for this weight."""
        batch = self.left.shape[0]
        rows = []
        for i, (update, level) in enumerate(zip(reversed(self.updates), weight.levels)):
            if i > 0:
                rows.append(level.bias_term.expand(batch, 1, -1))
            rows += [update.projected @ level.weight, -level.column_sums.expand(batch, 1, -1)]
        return torch.cat(rows, dim=1)

    def times(
        self, weight: FactoredWeight, grid: tuple[int, int] | None = None, region: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """tokens @ W + bias, (B, N, D); with region (rows, cols), only for the tokens in those
        top-left rows and columns of the (height, width) token grid, (B, rows * cols, D)."""
        batch, num_rows, num_image = self.scale.shape[0], self.left.shape[1], self.scale.shape[2]
        scale, image_part, left = self.scale.view(batch, num_image, 1), weight.image_part, self.left
        constant = weight.constant
        if region is not None:
            (height, width), (rows, cols) = grid, region
            scale = scale.view(batch, height, width, 1)[:, :rows, :cols]
            image_part = image_part.view(height, width, -1)[:rows, :cols]
            if constant.dim() == 2:  # a per-token constant (N, D)
                constant = constant.view(height, width, -1)[:rows, :cols]
            # whole rows are a view; a column range is copied (K x rows * cols, ~1 MB)
            left = left.view(batch, num_rows, height, width)[..., :rows, :cols].reshape(batch, num_rows, rows * cols)
        out = torch.addcmul(constant, image_part, scale.to(image_part.dtype)).view(batch, left.shape[2], -1)
        return add_batched_product_(out, left.transpose(1, 2), self.right(weight))


def factor_keys(updates: list[KeysUpdate]) -> FactoredKeys:
    """The per-prompt factors of the image tokens after the blocks that made `updates`."""
    first = updates[0]
    batch, _, num_image = first.attn.shape
    rows = sum(update.attn.shape[1] + 2 for update in updates) - 1
    left = torch.empty(batch, rows, num_image, dtype=first.attn.dtype, device=first.attn.device)
    row = 0
    scale = None  # the product of the rstd of the norms unrolled so far, (B, 1, N)
    for update in reversed(updates):
        if scale is not None:  # the previous norm's bias, scaled by the later norms
            left[:, row] = scale[:, 0]
            row += 1
        rstd = update.rstd.view(batch, 1, num_image)
        scale = rstd if scale is None else scale * rstd
        num_columns = update.attn.shape[1]
        torch.mul(update.attn, scale, out=left[:, row : row + num_columns])
        torch.mul(update.mean.view(batch, 1, num_image), scale, out=left[:, row + num_columns : row + num_columns + 1])
        row += num_columns + 1
    return FactoredKeys(left, scale, updates)


def per_head_columns(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., N, heads * d) -> (..., heads, d, N), a view."""
    *lead, num, width = x.shape
    return x.view(*lead, num, heads, width // heads).movedim(-3, -1)


def factored_logits(
    queries: torch.Tensor, keys: FactoredKeys, weight: FactoredWeight, image_extra: torch.Tensor
) -> torch.Tensor:
    """Per-head queries (B, h, T, d) against the image tokens' projection tokens @ W +
    image_extra (N, D) (a per-image term such as the positional encoding's projection; W's
    constant is not added) -> logits (B, h*T, N)."""
    batch, heads, num_tokens, head_dim = queries.shape
    num_image = keys.scale.shape[-1]
    # written head-major, (B, h, N, d), so that the B*h products read it without a copy
    image = queries.new_empty(batch, heads, num_image, head_dim)
    torch.addcmul(
        image_extra.view(num_image, heads, head_dim), weight.image_part.view(num_image, heads, head_dim),
        keys.scale.view(batch, num_image, 1, 1), out=image.permute(0, 2, 1, 3),
    )
    logits = torch.matmul(queries, image.transpose(-1, -2))  # (B, h, T, N)
    low_rank = torch.matmul(queries, per_head_columns(keys.right(weight), heads))  # (B, h, T, K)
    logits = logits.view(batch, heads * num_tokens, num_image)
    return add_batched_product_(logits, low_rank.reshape(batch, heads * num_tokens, -1), keys.left)


def factored_mix(attn: torch.Tensor, keys: FactoredKeys, weight: FactoredWeight, heads: int) -> torch.Tensor:
    """Attention weights (B, h*T, N), each row summing to one, times the image tokens'
    projection tokens @ W + bias, per head -> (B, h, T, d)."""
    batch, rows, num_image = attn.shape
    num_tokens = rows // heads
    head_dim = weight.image_part.shape[-1] // heads
    image = weight.image_part.view(num_image, heads, head_dim).transpose(0, 1)  # (h, N, d)
    # all prompts of a head in one product, (h, B*T, N) @ (h, N, d), so that the image part is
    # not copied per prompt
    scaled = (attn * keys.scale).view(batch, heads, num_tokens, num_image).transpose(0, 1)
    values = torch.bmm(scaled.reshape(heads, batch * num_tokens, num_image), image)
    values = values.view(heads, batch, num_tokens, head_dim).transpose(0, 1)  # (B, h, T, d)
    mixed_left = torch.bmm(attn, keys.left.transpose(1, 2)).view(batch, heads, num_tokens, -1)  # (B, h, T, K)
    right = keys.right(weight).view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, h, K, d)
    values = values.add_(mixed_left @ right)
    return values.add_(weight.constant.view(heads, 1, head_dim))
