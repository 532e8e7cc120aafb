"""SAM's ViT image encoder (ViT-B/L/H): a (B, 3, 1024, 1024) image in, a (B, 256, 64, 64) embedding out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d, MLPBlock


class ImageEncoderViT(nn.Module):
    """Plain ViT with windowed attention, a few global-attention blocks and a convolutional neck."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens, channels last: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block; attention is windowed when window_size > 0, global otherwise."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(dim, num_heads, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, padded_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded_hw, (height, width))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head attention with decomposed relative position bias, on a (B, H, W, C) token grid."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x)))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """The qkv projection of a token grid (B, H, W, 3C) -> the attention's output before the
        output projection (B, H, W, C)."""
        batch, height, width, _ = qkv.shape
        tokens = height * width
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, HW, head_dim)
        rel_h, rel_w = relative_position_terms(q, self.rel_pos_h, self.rel_pos_w, (height, width))
        # scaled_dot_product_attention uses head_dim**-0.5, the same scale as the reference, and
        # runs a fused kernel instead of materialising softmax inputs several times. Its bias
        # mask is (HW x HW) per head, 800 MB for a global block of ViT-B: on a CPU it is built
        # and used a slice of queries at a time, small enough to stay in cache.
        if q.device.type == "cpu":
            batch_step, row_step = bias_chunks(batch, self.num_heads, height, width, q.element_size())
        else:
            batch_step, row_step = batch, height
        # every slice of queries reads all keys and values: lay them out once
        k, v = k.contiguous(), v.contiguous()
        out = torch.empty_like(q)
        for b0 in range(0, batch, batch_step):
            b1 = min(b0 + batch_step, batch)
            for r0 in range(0, height, row_step):
                r1 = min(r0 + row_step, height)
                bias = rel_h[b0:b1, :, r0:r1, :, :, None] + rel_w[b0:b1, :, r0:r1, :, None, :]
                bias = bias.reshape(b1 - b0, self.num_heads, (r1 - r0) * width, tokens)
                rows = slice(r0 * width, r1 * width)
                out[b0:b1, :, rows] = attention_with_bias(q[b0:b1, :, rows], k[b0:b1], v[b0:b1], bias)
        return out.transpose(1, 2).reshape(batch, height, width, -1)


def attention_with_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for (B, heads, L, d) q and (B, heads, S, d) k, v."""
    if q.device.type != "cpu" or q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    # bf16/fp16 on a CPU: these three plain ops, which are what the official code computes under
    # autocast. (The fused kernel with a reduced-precision mask was measured both ~1.5x slower
    # and 3% faster on the same CPU at different times; inference runs fast/vit.py's attention.)
    batch, heads, length, dim = q.shape
    logits = torch.baddbmm(
        bias.reshape(batch * heads, length, -1),
        q.reshape(batch * heads, length, dim) * dim**-0.5,
        k.reshape(batch * heads, -1, dim).transpose(1, 2),
    )
    out = torch.bmm(torch.softmax(logits, dim=-1).to(v.dtype), v.reshape(batch * heads, -1, dim))
    return out.view(batch, heads, length, dim)


# Bytes of attention bias built at once on a CPU: a piece that fits the last-level cache (one image
# row of a global block is 12.6 MB for ViT-B) runs faster than the whole 800 MB bias at once
# (benchmarks/RESULTS.md, "Design measurements").
BIAS_CHUNK_BYTES = 16 * 2**20


def bias_chunks(batch: int, heads: int, height: int, width: int, element_size: int) -> tuple[int, int]:
    """(batch elements, query rows) per attention call so that the bias stays near BIAS_CHUNK_BYTES."""
    row_bytes = heads * width * height * width * element_size
    image_bytes = row_bytes * height
    if image_bytes <= BIAS_CHUNK_BYTES:
        return max(1, BIAS_CHUNK_BYTES // image_bytes), height
    return 1, max(1, BIAS_CHUNK_BYTES // row_bytes)


def relative_position_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decomposed relative position bias (MViTv2) of q (B, heads, HW, C): the vertical term
    (B, heads, H, W, H) and the horizontal term (B, heads, H, W, W). The bias of query (h, w) for
    key (kh, kw) is vertical[..., h, w, kh] + horizontal[..., h, w, kw]."""
    height, width = size
    rh = gather_relative_positions(height, height, rel_pos_h)  # (H, H, C)
    rw = gather_relative_positions(width, width, rel_pos_w)  # (W, W, C)
    batch, heads, _, dim = q.shape
    r_q = q.reshape(batch * heads, height, width, dim)
    # in q's precision, so that a bf16 bias is not built in float32 and converted
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh.to(q.dtype))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw.to(q.dtype))
    return rel_h.view(batch, heads, height, width, height), rel_w.view(batch, heads, height, width, width)


def gather_relative_positions(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Embeddings of every (query, key) offset along one axis: (q_size, k_size, C)."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        # Only reached for input sizes other than the checkpoint's; interpolate the table as SAM does.
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window, window, C), zero-padding H and W up to multiples of window."""
    batch, height, width, channels = x.shape
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = height + pad_h, width + pad_w
    x = x.view(batch, hp // window, window, wp // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of window_partition: back to (B, H, W, C) with the padding cropped."""
    hp, wp = padded_hw
    height, width = hw
    batch = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(batch, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, hp, wp, -1)
    if hp > height or wp > width:
        x = x[:, :height, :width, :].contiguous()
    return x
