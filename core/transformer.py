"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import math

import torch
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

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding (1 or B, C, H, W), image_pe (1, C, H, W), point_embedding (B, T, C)
        -> processed tokens (B, T, C) and image tokens (B, H*W, C)."""
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn_out = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attn_out)
        if keys.shape[0] != queries.shape[0]:
            keys = keys.expand(queries.shape[0], -1, -1)
        return queries, keys


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

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            # The first block replaces the tokens by their self-attention (no residual, no PE).
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class Attention(nn.Module):
    """Multi-head attention whose q/k/v may be projected to a smaller width (downsample_rate).

    Batches broadcast: q of batch B may attend to k/v of batch 1, and vice versa.
    """

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
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        head_dim = q.shape[-1]
        attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(head_dim), dim=-1)
        num_values = v.shape[-2]
        if num_values < head_dim:
            # Image tokens attending to a handful of prompt tokens: project the few values through
            # out_proj first, out = sum_h attn_h @ (v_h W_h^T), which is the same product with the
            # (tokens x head_dim) intermediate and its projection replaced by a rank-T update.
            batch = max(attn.shape[0], v.shape[0])
            weight = self.out_proj.weight.reshape(-1, self.num_heads, head_dim).permute(1, 2, 0)
            projected_values = (v @ weight).expand(batch, -1, -1, -1)  # (B, heads, T, C)
            queries = attn.shape[-2]
            attn = attn.expand(batch, -1, -1, -1).permute(0, 2, 1, 3).reshape(batch, queries, -1)
            out = attn @ projected_values.reshape(batch, -1, projected_values.shape[-1])
            return out + self.out_proj.bias
        out = attn @ v
        batch, heads, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))
