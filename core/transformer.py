"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock


class TwoWayTransformer(nn.Module):
    """Runs `depth` two-way attention blocks, then a final token-to-image attention.

    The image side may have batch 1 while the prompts have batch B: the first block then computes
    every image-only projection once for all prompts instead of once per prompt.
    """

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate, skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def prepare_image(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> "PreparedImage":
        """Everything the transformer computes from the image alone: the image tokens, their
        positional encoding and the first block's projections of them. Valid for any prompts."""
        keys = image_embedding.flatten(2).permute(0, 2, 1).contiguous()
        key_pe = image_pe.flatten(2).permute(0, 2, 1).contiguous()
        return PreparedImage(keys, key_pe, self.layers[0].project_image(keys, key_pe))

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        prepared: "PreparedImage | None" = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding (1 or B, C, H, W), image_pe (1, C, H, W), point_embedding (B, T, C)
        -> processed tokens (B, T, C) and image tokens (B, H*W, C). `prepared` (from
        prepare_image on the same inputs) skips the image-only work."""
        if prepared is None:
            prepared = self.prepare_image(image_embedding, image_pe)
        keys, key_pe = prepared.keys, prepared.key_pe
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            projections = prepared.first_projections if i == 0 else None
            queries, keys = layer(queries, keys, point_embedding, key_pe, projections)
        final = self.final_attn_token_to_image
        attn_out = final.attend_tokens_to_image(
            final.q_proj(queries + point_embedding), final.k_proj(keys + key_pe), final.v_proj(keys)
        )
        queries = self.norm_final_attn(queries + attn_out)
        if keys.shape[0] != queries.shape[0]:
            keys = keys.expand(queries.shape[0], -1, -1)
        return queries, keys


class PreparedImage(NamedTuple):
    """Image tokens (1, N, C), their positional encoding (1, N, C), and the first block's
    (k to image, q to token, v to image) projections of them."""

    keys: torch.Tensor
    key_pe: torch.Tensor
    first_projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, tokens -> image, MLP on tokens, image -> tokens."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, attention_downsample_rate: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def project_image(self, keys: torch.Tensor, key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The image tokens' projections both cross attentions need: (k to image, q to token, v to image)."""
        to_image, to_token = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        # Both cross attentions read the image tokens with their positional encoding: project
        # them for the two in one matrix product.
        k_to_image, q_to_token = fused_linear(keys + key_pe, to_image.k_proj, to_token.q_proj)
        return k_to_image, q_to_token, to_image.v_proj(keys)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        image_projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            # The first block replaces the tokens by their self-attention (no residual, no PE).
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        to_image, to_token = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if image_projections is None:
            image_projections = self.project_image(keys, key_pe)
        k_to_image, q_to_token, v_to_image = image_projections

        q = queries + query_pe
        queries = self.norm2(queries + to_image.attend_tokens_to_image(to_image.q_proj(q), k_to_image, v_to_image))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = to_token.attend_image_to_tokens(q_to_token, to_token.k_proj(q), to_token.v_proj(queries), residual=keys)
        return queries, self.norm4(keys)


def fused_linear(x: torch.Tensor, *layers: nn.Linear) -> tuple[torch.Tensor, ...]:
    """Apply several Linear layers to the same input with one matrix product."""
    weight = torch.cat([layer.weight for layer in layers], dim=0)
    bias = torch.cat([layer.bias for layer in layers], dim=0)
    out = F.linear(x, weight, bias)
    return tuple(out.split([layer.out_features for layer in layers], dim=-1))


def block_diagonal(tokens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, heads * d) projected tokens -> (B, heads * d, heads * T) block-diagonal matrix.

    Multiplying (B, N, heads * d) image tokens by it gives every head's (N, T) attention logits
    side by side in one dense matrix product: the product does heads-fold redundant work on a
    handful of tokens, but never splits the large image-token tensor into heads (a full copy).
    """
    batch, num_tokens, width = tokens.shape
    head_dim = width // num_heads
    per_head = tokens.view(batch, num_tokens, num_heads, head_dim).permute(0, 2, 3, 1)  # (B, h, d, T)
    eye = torch.eye(num_heads, dtype=tokens.dtype, device=tokens.device)
    blocks = per_head[:, :, None, :, :] * eye[None, :, :, None, None]  # (B, h, h, d, T)
    return blocks.permute(0, 1, 3, 2, 4).reshape(batch, width, num_heads * num_tokens)


def softmax_last_small(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (a handful of prompt tokens).

    torch.softmax is tuned for long rows; on rows of ~7 values these four vectorised passes
    are about twice as fast (measured on CPU) and give the same result to float rounding.
    """
    shifted = x - x.amax(dim=-1, keepdim=True)
    exp = shifted.exp_()
    return exp.div_(exp.sum(dim=-1, keepdim=True))


class Attention(nn.Module):
    """Multi-head attention whose q/k/v may be projected to a smaller width (downsample_rate)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.internal_dim = embedding_dim // downsample_rate
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Plain attention between small token sets (the prompt self-attention)."""
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
        out = attn @ v
        batch, heads, tokens, head_dim = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))

    def attend_tokens_to_image(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Projected prompt tokens q (B, T, D) attend to projected image tokens k, v (1 or B, N, D)."""
        batch, num_tokens, width = q.shape
        heads = self.num_heads
        head_dim = width // heads
        scale = 1.0 / math.sqrt(head_dim)
        k = k.expand(batch, -1, -1)
        v = v.expand(batch, -1, -1)
        logits = torch.bmm(k, block_diagonal(q * scale, heads))  # (B, N, heads * T)
        attn = torch.softmax(logits, dim=1)  # over the image tokens
        mixed = torch.bmm(attn.transpose(1, 2), v)  # (B, heads * T, D); keep each head's own block
        mixed = mixed.view(batch, heads, num_tokens, heads, head_dim).diagonal(dim1=1, dim2=3)  # (B, T, d, h)
        out = mixed.permute(0, 1, 3, 2).reshape(batch, num_tokens, width)
        return self.out_proj(out)

    def attend_image_to_tokens(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """Projected image tokens q (1 or B, N, D) attend to projected prompt tokens k, v (B, T, D);
        returns residual + attention output, (B, N, C)."""
        batch, num_tokens, width = k.shape
        heads = self.num_heads
        head_dim = width // heads
        q = q.expand(batch, -1, -1)
        logits = torch.bmm(q, block_diagonal(k / math.sqrt(head_dim), heads))  # (B, N, heads * T)
        attn = softmax_last_small(logits.view(batch, -1, heads, num_tokens))
        # With few prompt tokens, pass the values through out_proj first: sum_h attn_h (v_h W_h^T)
        # is the same product as out_proj(attn @ v) with a rank-(heads * T) update instead of an
        # (N x D) intermediate and its projection.
        weight = self.out_proj.weight.view(-1, heads, head_dim).permute(1, 2, 0)  # (h, d, C)
        projected_values = v.view(batch, num_tokens, heads, head_dim).transpose(1, 2) @ weight  # (B, h, T, C)
        projected_values = projected_values.reshape(batch, heads * num_tokens, -1)
        base = residual + self.out_proj.bias
        return torch.baddbmm(base.expand(batch, -1, -1), attn.view(batch, -1, heads * num_tokens), projected_values)
