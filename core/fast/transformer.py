"""The two-way transformer's fast inference path: functions over the plain modules of
`samkit.modeling.transformer` (TwoWayTransformer, TwoWayAttentionBlock, Attention), reading
their weights. They compute what the plain forward does (the reference; tests/core/
test_decoder_parity.py holds the two together) in another order.

The attention between a handful of prompt tokens (T ~ 7) and 4096 image tokens is computed
without projecting the image tokens per prompt. Attention logits are bilinear in the two inputs,
(x W_q^T + b_q)(y W_k^T + b_k)^T, so each prompt token's projection can be multiplied into the
weight of the other side instead: per head that is a (T, C) matrix against the (N, C) image tokens
rather than an (N, C) x (C, D) projection of them. Biases on the side that a softmax normalises
over only shift every logit of a row by the same amount, and softmax is unchanged by that. The
values are handled the same way: the attention-weighted mean of projected image tokens is the
projection of their attention-weighted mean (the weights sum to one).

Three paths run through a block (block_forward):
- the first block, with a prepared image: the image tokens are the same for every prompt, so
  their per-head projections are computed once per image (PreparedImage.first_projections);
- later blocks, with a prepared image in fp32 and no autograd: the image tokens differ per
  prompt, but only by low-rank updates; the attentions read them in factored form (factored.py)
  and the tokens plus their positional encoding are never formed;
- otherwise (autocast, autograd, no prepared image, the reduced-precision mode): the folded
  attention on the tokens as they are (tokens_to_image, image_to_tokens).

In the reduced-precision mode (mask_decoder.image_side_dtype) the image side (the prepared image,
the image tokens and their updates, the attention logits and weights) is bfloat16 and the prompt
side float32: each function casts where the two meet.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..modeling.common import MLP, MLPBlock
from ..modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from .fused import FusedLinears, fused_linear_available
from .factored import (
    FactoredKeys,
    FactoredWeight,
    KeysUpdate,
    add_batched_product_,
    factor_keys,
    factor_weight,
    factored_logits,
    factored_mix,
)

# -- records ---------------------------------------------------------------------------------


class ImageProjections(NamedTuple):
    """One block's projections of batch-1 image tokens, split by head: keys and values for the
    token-to-image attention and queries for the image-to-token attention, each (heads, N, d)."""

    k_to_image: torch.Tensor
    v_to_image: torch.Tensor
    q_to_token: torch.Tensor


class ImageFactors(NamedTuple):
    """One block's image-side weights in factored form (factored.py), for image tokens that
    earlier blocks changed: the token-to-image keys (with the positional encoding's projection)
    and values, and the image-to-token queries (with the positional encoding's projection plus
    the constant, which the softmax over tokens does not cancel)."""

    k: FactoredWeight
    k_pe: torch.Tensor
    v: FactoredWeight
    q: FactoredWeight | None = None
    q_pe: torch.Tensor | None = None


class TransformerFactors(NamedTuple):
    """ImageFactors per block (None for the first, which reads the unchanged image tokens) and
    for the final token-to-image attention."""

    blocks: list[ImageFactors | None]
    final: ImageFactors


class PreparedImage(NamedTuple):
    """Image tokens (1, N, C), their positional encoding (1, N, C), the first block's
    projections of them, and the later attentions' factored weights (or None). factor_output:
    also return the final image tokens' factors where the attentions read the tokens as they are
    (the reduced-precision mode, `reduced`: its upscaling reads them in factored form)."""

    keys: torch.Tensor
    key_pe: torch.Tensor
    first_projections: ImageProjections
    factors: TransformerFactors | None = None
    factor_output: bool = False
    mlps: tuple[PackedMLP | None, ...] | None = None

    def reduced(self, transformer: TwoWayTransformer, dtype: torch.dtype, fused: FusedLinears) -> PreparedImage:
        """The same for the reduced-precision mode (mask_decoder.image_side_dtype): the image
        side in `dtype` (unfactored), with the blocks' MLPs as fused products from `fused`'s
        kept weights (pack_mlp)."""
        if self.keys.dtype == dtype:
            return self
        if self.factors is not None:
            raise ValueError("the factored form is float32 only")
        k, v, q = (t.to(dtype) for t in self.first_projections)
        # k and q enter their products transposed, (h, d, N): laid out so, as the bfloat16
        # products otherwise copy them on every call
        k, q = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, q))
        v = v.contiguous()
        mlps = tuple(pack_mlp(layer.mlp, dtype, fused) for layer in transformer.layers)
        return PreparedImage(self.keys.to(dtype), self.key_pe.to(dtype), ImageProjections(k, v, q), None, True, mlps)


class PackedMLP(NamedTuple):
    """A block's two-layer MLP for the reduced-precision mode: its two linear layers, the
    activation oneDNN applies to the first product ("gelu", the erf GELU, or "relu"), the dtype
    the products run in, and the FusedLinears that keeps their weights in that dtype."""

    lin1: nn.Linear
    lin2: nn.Linear
    activation: str
    dtype: torch.dtype
    fused: FusedLinears

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prompt tokens (B, T, C) in float32 -> the MLP's output in float32, computed in
        `dtype`: two fused products (the MLP is ~2 MB of weights per product in float32, read for
        a handful of tokens)."""
        x = tokens.reshape(-1, tokens.shape[-1]).to(self.dtype)
        x = self.fused.linear(self.fused.linear(x, self.lin1, self.activation), self.lin2)
        return x.to(tokens.dtype).view(tokens.shape)


def pack_mlp(mlp: nn.Module, dtype: torch.dtype, fused: FusedLinears) -> PackedMLP | None:
    """PackedMLP of SAM 1's MLPBlock (ReLU or erf GELU) or SAM 2's two-layer MLP (ReLU) on a CPU with
    oneDNN's fused products; None otherwise (token_mlp then runs it as it is)."""
    erf_gelu = isinstance(mlp, MLPBlock) and type(mlp.act) is nn.GELU and mlp.act.approximate == "none"
    if isinstance(mlp, MLPBlock) and (type(mlp.act) is nn.ReLU or erf_gelu):
        (lin1, lin2), activation = (mlp.lin1, mlp.lin2), "gelu" if erf_gelu else "relu"
    elif isinstance(mlp, MLP) and len(mlp.layers) == 2:
        (lin1, lin2), activation = mlp.layers, "relu"
    else:
        return None
    if not fused_linear_available() or lin1.weight.device.type != "cpu":
        return None
    return PackedMLP(lin1, lin2, activation, dtype, fused)


class TransformerOutput(NamedTuple):
    """What transformer_forward returns: the processed prompt tokens (B, T', C) (those asked
    for), the final image tokens (B, N, C), and with a factored prepared image the final image
    tokens' factors (then `keys` is an intermediate, not the final tokens)."""

    tokens: torch.Tensor
    keys: torch.Tensor
    factored_keys: FactoredKeys | None  # with factor_output also beside the final tokens


class BlockOutput(NamedTuple):
    """What block_forward returns: updated prompt tokens (B, T, C), image tokens (B, N, C), and
    the update that made the image tokens (for the factored form)."""

    queries: torch.Tensor
    keys: torch.Tensor
    update: KeysUpdate


class ImageToTokens(NamedTuple):
    """The image-to-token attention's output in factored form: attn (B, h*T, N) and projected
    values (B, h*T, C); the output for the image tokens is attn^T @ projected, (B, N, C)."""

    attn: torch.Tensor
    projected: torch.Tensor


# -- the transformer -----------------------------------------------------------------------


def prepare_image(
    transformer: TwoWayTransformer, image_embedding: torch.Tensor, image_pe: torch.Tensor, factored: bool = False
) -> PreparedImage:
    """Everything the transformer computes from the image alone (batch 1): the image tokens,
    their positional encoding and the first block's per-head projections of them; with
    `factored`, also the later attentions' weights in factored form. Valid for any prompts
    on that image."""
    keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
    key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
    factors = None
    if factored:
        norms = [layer.norm4 for layer in transformer.layers]
        blocks = [None] + [
            factor_image_side(layer, keys[0], key_pe[0], norms[:i])
            for i, layer in enumerate(transformer.layers)
            if i > 0
        ]
        final = factor_keys_values(transformer.final_attn_token_to_image, keys[0], key_pe[0], norms)
        factors = TransformerFactors(blocks, final)
    return PreparedImage(keys, key_pe, project_image(transformer.layers[0], keys[0], key_pe[0]), factors)


def transformer_forward(
    transformer: TwoWayTransformer,
    image_embedding: torch.Tensor | None,
    image_pe: torch.Tensor,
    point_embedding: torch.Tensor,
    prepared: PreparedImage | None = None,
    output_rows: list[int] | None = None,
) -> TransformerOutput:
    """TwoWayTransformer.forward: image_embedding (1 or B, C, H, W), image_pe (1, C, H, W),
    point_embedding (B, T, C). The image side may have batch 1 while the prompts have batch B.
    `prepared` (prepare_image of the same batch-1 inputs; image_embedding may then be None)
    skips the image-only work. output_rows: return only these tokens, (B, len(output_rows), C);
    the final attention and norm treat each token on its own, so the others (e.g. the prompt
    tokens, whose outputs SAM never reads) are not computed."""
    if prepared is None:
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        projections = factors = None
    else:
        keys, key_pe, projections, factors = prepared[:4]
    queries = point_embedding
    updates = []
    for i, layer in enumerate(transformer.layers):
        block_factors = factors.blocks[i] if factors is not None else None
        factored_keys = factor_keys(updates) if block_factors is not None else None
        # after the first block, keys is the previous block's output, made here
        queries, keys, update = block_forward(
            layer, queries, keys, point_embedding, key_pe, projections if i == 0 else None,
            keys_are_scratch=i > 0, factored_keys=factored_keys, factors=block_factors,
            packed_mlp=prepared.mlps[i] if prepared is not None and prepared.mlps else None,
        )
        updates.append(update)
    final = transformer.final_attn_token_to_image
    if output_rows is not None and output_rows != list(range(queries.shape[1])):
        rows = torch.tensor(output_rows, device=queries.device)
        queries, point_embedding = queries.index_select(1, rows), point_embedding.index_select(1, rows)
    factor_output = factors is not None or (prepared is not None and prepared.factor_output)
    factored_keys = factor_keys(updates) if factor_output else None
    if factors is not None:
        attn_out = tokens_to_factored_image(final, queries + point_embedding, factored_keys, factors.final)
    else:
        attn_out = tokens_to_image(final, queries + point_embedding, keys + key_pe, keys)
    queries = transformer.norm_final_attn(queries + attn_out)
    return TransformerOutput(queries, keys, factored_keys)


# -- one block -----------------------------------------------------------------------------


def project_image(block: TwoWayAttentionBlock, keys: torch.Tensor, key_pe: torch.Tensor) -> ImageProjections:
    """keys, key_pe (N, C) of one image -> this block's per-head projections of them."""
    to_image, to_token = block.cross_attn_token_to_image, block.cross_attn_image_to_token
    with_pe = keys + key_pe
    return ImageProjections(
        split_heads(to_image, to_image.k_proj(with_pe)),
        split_heads(to_image, to_image.v_proj(keys)),
        split_heads(to_token, to_token.q_proj(with_pe)),
    )


def factor_image_side(
    block: TwoWayAttentionBlock, keys: torch.Tensor, key_pe: torch.Tensor, norms: list[nn.LayerNorm]
) -> ImageFactors:
    """keys, key_pe (N, C) the input image tokens, norms the norm4 of the blocks before this
    one -> this block's image-side weights in factored form."""
    keys_values = factor_keys_values(block.cross_attn_token_to_image, keys, key_pe, norms)
    to_token = block.cross_attn_image_to_token
    q = factor_weight(keys, to_token.q_proj.weight.T, to_token.q_proj.bias, norms)
    return keys_values._replace(q=q, q_pe=torch.addmm(q.constant, key_pe, to_token.q_proj.weight.T))


def block_forward(
    block: TwoWayAttentionBlock,
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_pe: torch.Tensor,
    key_pe: torch.Tensor,
    image_projections: ImageProjections | None = None,
    keys_are_scratch: bool = False,
    factored_keys: FactoredKeys | None = None,
    factors: ImageFactors | None = None,
    packed_mlp: PackedMLP | None = None,
) -> BlockOutput:
    """TwoWayAttentionBlock.forward for queries (B, T, C), keys (1 or B, N, C) -> updated
    queries, keys (B, N, C) and the update that made the keys. `image_projections` (batch-1
    keys only) replaces the image-side work of this block; `factors` with `factored_keys` (the
    same keys in factored form) let the attentions read the keys without projecting them.
    keys_are_scratch: keys is an intermediate nobody else holds, so the update may overwrite it
    (only done without autograd). packed_mlp: the reduced-precision mode's MLP (PackedMLP)."""
    if block.skip_first_layer_pe:
        # The first block replaces the tokens by their self-attention (no residual, no PE).
        queries = block.self_attn(queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q, q, queries)
    queries = block.norm1(queries)

    to_image, to_token = block.cross_attn_token_to_image, block.cross_attn_image_to_token
    keys_with_pe = None if image_projections is not None or factors is not None else keys + key_pe
    if image_projections is not None:
        attn_out = tokens_to_projected_image(to_image, queries + query_pe, image_projections)
    elif factors is not None:
        attn_out = tokens_to_factored_image(to_image, queries + query_pe, factored_keys, factors)
    else:
        attn_out = tokens_to_image(to_image, queries + query_pe, keys_with_pe, keys)
    queries = block.norm2(queries + attn_out)
    mlp_out = packed_mlp(queries) if packed_mlp is not None else token_mlp(block.mlp, queries)
    queries = block.norm3(queries + mlp_out)

    tokens_with_pe = queries + query_pe
    if image_projections is not None:
        attn, projected = projected_image_to_tokens(to_token, image_projections.q_to_token, tokens_with_pe, queries)
    elif factors is not None:
        attn, projected = factored_image_to_tokens(to_token, factored_keys, factors, tokens_with_pe, queries)
    else:
        attn, projected = image_to_tokens(to_token, keys_with_pe, tokens_with_pe, queries)
    batch = queries.shape[0]
    same_dtype = keys.dtype == attn.dtype == projected.dtype  # not so under autocast
    if keys_are_scratch and keys.shape[0] == batch and same_dtype and not torch.is_grad_enabled():
        keys = add_batched_product_(keys, attn.transpose(1, 2), projected)  # saves a copy of the N x C tokens
    else:
        keys = torch.baddbmm(keys.expand(batch, -1, -1), attn.transpose(1, 2), projected)
    norm = block.norm4
    keys, mean, rstd = torch.native_layer_norm(keys, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return BlockOutput(queries, keys, KeysUpdate(attn, projected, mean, rstd))


def token_mlp(mlp: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The block's MLP (an MLPBlock) on prompt tokens (B, T, C), each product split into two
    halves of the hidden width run as a batch of 2: for a few tokens MKL runs a single product
    on one core, but a batch on both (timings in benchmarks/RESULTS.md, "Design measurements").
    The weights are read through strided views, never copied. SAM 1's MLPBlock and SAM 2's
    two-layer MLP (ReLU) are split; another kind of MLP runs as it is."""
    if isinstance(mlp, MLPBlock):
        lin1, lin2, act = mlp.lin1, mlp.lin2, mlp.act
    elif isinstance(mlp, MLP) and len(mlp.layers) == 2:
        (lin1, lin2), act = mlp.layers, torch.relu
    else:
        return mlp(tokens)
    hidden, width = lin1.weight.shape
    if tokens.device.type != "cpu" or hidden % 2 or torch.is_autocast_enabled("cpu"):
        return mlp(tokens)
    halves = tokens.reshape(1, -1, width).expand(2, -1, -1)
    weight1 = lin1.weight.view(2, hidden // 2, width).transpose(1, 2)  # (2, C, H/2)
    inner = act(torch.baddbmm(lin1.bias.view(2, 1, -1), halves, weight1))
    weight2 = lin2.weight.t().reshape(2, hidden // 2, width)  # (2, H/2, C), a view
    return (torch.bmm(inner, weight2).sum(0) + lin2.bias).view(tokens.shape)


def rows_times(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, M, K) @ (1 or B, K, N) -> (B, M, N). A batch-1 right side is multiplied once for all
    B as one (B*M, K) matrix instead of being expanded (torch.matmul would copy it B times)."""
    if y.shape[0] == 1 and x.shape[0] != 1:
        batch, rows, _ = x.shape
        return (x.reshape(batch * rows, -1) @ y[0]).view(batch, rows, -1)
    return torch.bmm(x, y)


def folded_times_image(folded: torch.Tensor, image: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Folded token weights (B, M, C) times image tokens (1 or B, N, C) transposed, plus an
    optional per-row bias (B, M, 1) -> (B, M, N): the attention logits of M = heads * tokens
    prompt columns against every image token, one row per column.

    A batch-1 image is multiplied once for all B prompts instead of being expanded.
    """
    batch, rows, width = folded.shape
    if image.shape[0] == 1 and batch > 1:
        flat = folded.reshape(batch * rows, width)
        if bias is None:
            return (flat @ image[0].T).view(batch, rows, -1)
        return torch.addmm(bias.reshape(batch * rows, 1), flat, image[0].T).view(batch, rows, -1)
    image_t = image.expand(batch, -1, -1).transpose(1, 2)
    if bias is None:
        return torch.bmm(folded, image_t)
    return torch.baddbmm(bias, folded, image_t)


# -- attention (each function reads one plain Attention's weights) ----------------------------


def split_heads(attention: Attention, x: torch.Tensor) -> torch.Tensor:
    """(..., N, heads * d) -> (..., heads, N, d)."""
    *lead, tokens, width = x.shape
    heads = attention.num_heads
    return x.reshape(*lead, tokens, heads, width // heads).transpose(-3, -2)


def merge_heads(attention: Attention, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, d) -> (B, T, heads * d) projected by out_proj."""
    batch, heads, tokens, head_dim = x.shape
    return attention.out_proj(x.transpose(1, 2).reshape(batch, tokens, heads * head_dim))


def scaled_heads(attention: Attention, proj: nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    """Prompt tokens (B, T, C) through proj, split by head and divided by sqrt(head dim):
    the prompt side of an attention's logits, (B, h, T, d)."""
    return split_heads(attention, proj(tokens)) * (1.0 / math.sqrt(attention.internal_dim // attention.num_heads))


def head_weights(attention: Attention, proj: nn.Linear) -> torch.Tensor:
    """A projection's weight split by output head: (heads, d, C)."""
    return proj.weight.view(attention.num_heads, -1, proj.in_features)


def tokens_to_image(
    attention: Attention, tokens: torch.Tensor, image_with_pe: torch.Tensor, image: torch.Tensor
) -> torch.Tensor:
    """Prompt tokens (B, T, C) attend to image tokens (1 or B, N, C) -> (B, T, C), as
    attention(tokens, image_with_pe, image).

    Keys are image_with_pe projected, values image projected; neither projection of the N
    image tokens is formed (module docstring). k_proj's bias drops out in the softmax over N.
    """
    batch, num_tokens, _ = tokens.shape
    heads = attention.num_heads
    q = scaled_heads(attention, attention.q_proj, tokens)  # (B, h, T, d)
    folded = (q @ head_weights(attention, attention.k_proj)).reshape(batch, heads * num_tokens, -1)  # (B, h*T, C)
    attn = torch.softmax(folded_times_image(folded.to(image.dtype), image_with_pe), dim=-1)  # (B, h*T, N)
    mixed = rows_times(attn, image).to(tokens.dtype).view(batch, heads, num_tokens, -1)  # (B, h, T, C)
    values = mixed @ head_weights(attention, attention.v_proj).transpose(1, 2)  # (B, h, T, d)
    values = values + attention.v_proj.bias.view(heads, 1, -1)
    return merge_heads(attention, values)


def tokens_to_projected_image(attention: Attention, tokens: torch.Tensor, image: ImageProjections) -> torch.Tensor:
    """Prompt tokens (B, T, C) attend to one image's per-head keys and values (h, N, d)."""
    batch, num_tokens, _ = tokens.shape
    heads, _, head_dim = image.k_to_image.shape
    q = scaled_heads(attention, attention.q_proj, tokens)  # (B, h, T, d)
    # all prompts of a head against that head's keys in one product: (h, B*T, d) @ (h, d, N)
    q = q.transpose(0, 1).reshape(heads, batch * num_tokens, head_dim).to(image.k_to_image.dtype)
    attn = torch.softmax(q @ image.k_to_image.transpose(1, 2), dim=-1)
    values = (attn @ image.v_to_image).to(tokens.dtype).view(heads, batch, num_tokens, head_dim).transpose(0, 1)
    return merge_heads(attention, values)


def factor_keys_values(
    attention: Attention, keys: torch.Tensor, key_pe: torch.Tensor, norms: list[nn.LayerNorm]
) -> ImageFactors:
    """This token-to-image attention's keys and values in factored form, for image tokens
    that have passed the blocks whose norm4 are `norms` (keys, key_pe (N, C) their input)."""
    k = factor_weight(keys, attention.k_proj.weight.T, None, norms)  # k_proj's bias drops out in the softmax
    v = factor_weight(keys, attention.v_proj.weight.T, attention.v_proj.bias, norms)
    return ImageFactors(k, key_pe @ attention.k_proj.weight.T, v)


def tokens_to_factored_image(
    attention: Attention, tokens: torch.Tensor, image: FactoredKeys, factors: ImageFactors
) -> torch.Tensor:
    """tokens_to_image for prompt tokens (B, T, C) and image tokens in factored form."""
    heads = attention.num_heads
    q = scaled_heads(attention, attention.q_proj, tokens)  # (B, h, T, d)
    attn = torch.softmax(factored_logits(q, image, factors.k, factors.k_pe), dim=-1)  # (B, h*T, N)
    return merge_heads(attention, factored_mix(attn, image, factors.v, heads))


def factored_image_to_tokens(
    attention: Attention, image: FactoredKeys, factors: ImageFactors, tokens_with_pe: torch.Tensor, tokens: torch.Tensor
) -> ImageToTokens:
    """image_to_tokens for image tokens in factored form; the same factors of the output."""
    batch, num_tokens, _ = tokens.shape
    heads = attention.num_heads
    k = scaled_heads(attention, attention.k_proj, tokens_with_pe)  # (B, h, T, d)
    logits = factored_logits(k, image, factors.q, factors.q_pe)  # (B, h*T, N)
    attn = torch.softmax(logits.view(batch, heads, num_tokens, -1), dim=-2)
    return ImageToTokens(attn.view(batch, heads * num_tokens, -1), projected_values(attention, tokens))


def projected_values(attention: Attention, tokens: torch.Tensor) -> torch.Tensor:
    """Value tokens (B, T, C) through v_proj and, per head, out_proj -> (B, h*T, C).

    The image-to-token output for image token n is then sum_m attn[m, n] * row m, plus
    out_proj's bias: the N image tokens get a rank-(h*T) update instead of an (N, D)
    intermediate and its projection.
    """
    batch, num_tokens, _ = tokens.shape
    heads = attention.num_heads
    values = split_heads(attention, attention.v_proj(tokens))  # (B, h, T, d)
    out_proj = attention.out_proj
    out_weight = out_proj.weight.view(-1, heads, attention.internal_dim // heads).permute(1, 2, 0)  # (h, d, C)
    # Each head's weights sum to one over the tokens, so adding bias / heads to every row
    # adds out_proj's bias once, without a pass over the (B, N, C) result.
    return (values @ out_weight + out_proj.bias / heads).reshape(batch, heads * num_tokens, -1)


# The image-to-token softmax runs over the T prompt tokens of each head. Its logits are laid
# out (heads, T, N) so that torch.softmax runs across dim -2 with the N image tokens as the
# vectorised inner axis, rather than over rows of ~7 values; and the (T, d) x (d, N) product is
# taken rather than its transpose at d = 16 (timings in benchmarks/RESULTS.md, "Design
# measurements").


def image_to_tokens(
    attention: Attention, image_with_pe: torch.Tensor, tokens_with_pe: torch.Tensor, tokens: torch.Tensor
) -> ImageToTokens:
    """Image tokens (1 or B, N, C) attend to prompt tokens (B, T, C), as attention(image_with_pe,
    tokens_with_pe, tokens), returned in factored form (ImageToTokens)."""
    batch, num_tokens, _ = tokens.shape
    heads = attention.num_heads
    k = scaled_heads(attention, attention.k_proj, tokens_with_pe)  # (B, h, T, d)
    folded = (k @ head_weights(attention, attention.q_proj)).reshape(batch, heads * num_tokens, -1)  # (B, h*T, C)
    # q_proj's bias does not drop out here (the softmax runs over the tokens): it adds a
    # per-token constant to every image token's logits.
    bias = (k @ attention.q_proj.bias.view(heads, -1, 1)).view(batch, heads * num_tokens, 1)
    dtype = image_with_pe.dtype
    logits = folded_times_image(folded.to(dtype), image_with_pe, bias.to(dtype))  # (B, h*T, N)
    attn = torch.softmax(logits.view(batch, heads, num_tokens, -1), dim=-2)
    return ImageToTokens(attn.view(batch, heads * num_tokens, -1), projected_values(attention, tokens).to(dtype))


def projected_image_to_tokens(
    attention: Attention, image_q: torch.Tensor, tokens_with_pe: torch.Tensor, tokens: torch.Tensor
) -> ImageToTokens:
    """One image's per-head queries (h, N, d) attend to prompt tokens (B, T, C); returns the
    output in factored form like image_to_tokens."""
    batch, num_tokens, _ = tokens.shape
    heads, num_image, head_dim = image_q.shape
    k = scaled_heads(attention, attention.k_proj, tokens_with_pe)  # (B, h, T, d)
    k = k.transpose(0, 1).reshape(heads, batch * num_tokens, head_dim).to(image_q.dtype)
    logits = k @ image_q.transpose(1, 2)  # (h, B*T, N)
    attn = torch.softmax(logits.view(heads, batch, num_tokens, num_image), dim=-2)
    attn = attn.transpose(0, 1).reshape(batch, heads * num_tokens, num_image)
    return ImageToTokens(attn, projected_values(attention, tokens).to(image_q.dtype))
