"""MobileSAM's TinyViT-5M image encoder: a (B, 3, 1024, 1024) image in, a (B, 256, 64, 64) embedding out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d


class Conv2dBN(nn.Sequential):
    """A bias-free Conv2d followed by BatchNorm2d (checkpoint keys `.c.*` and `.bn.*`)."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.bn(self.c(x))
        # Inference: fold BatchNorm into the convolution weights (a few thousand multiplies)
        # instead of a separate normalisation pass over the whole feature map.
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale[:, None, None, None]
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: (B, 3, 1024, 1024) -> (B, 64, 256, 256)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual add, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim, 1)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv to the new width, depthwise 3x3 (stride 2, or 1 into the last stage), 1x1 conv.

    Takes a (B, C, H, W) map or (B, H*W, C) tokens of `input_resolution`; returns tokens.
    """

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = Conv2dBN(dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            height, width = self.input_resolution
            x = x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2)  # channels-last view
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        # (B, C, H, W) -> (B, H*W, C); a free view when x is channels-last.
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks on the feature map, then a patch merging to tokens."""

    def __init__(
        self, dim: int, input_resolution: tuple[int, int], depth: int, out_dim: int, expand_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(input_resolution, dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class Mlp(nn.Module):
    """Pre-normed feed-forward: LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Pre-normed window attention with a learned bias per head and absolute (|dy|, |dx|) offset."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        offsets = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("bias_index", offsets, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.head_dim)
        # The checkpoint lays q, k, v out per head, not as three blocks of the full width.
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        # A 4-D mask keeps SDPA on its fused CPU kernel; a 3-D one falls back to the math path.
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)[None]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, -1))


class TinyViTBlock(nn.Module):
    """Window attention (residual), depthwise 3x3 conv on the token grid, MLP (residual)."""

    def __init__(
        self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.input_resolution
        batch, tokens, channels = x.shape
        window = self.window_size
        shortcut = x
        grid = x.view(batch, height, width, channels)
        pad_b = (window - height % window) % window
        pad_r = (window - width % window) % window
        if pad_b or pad_r:
            # Padded tokens take part in attention as keys, exactly as in the reference.
            grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = height + pad_b, width + pad_r
        nh, nw = ph // window, pw // window
        windows = (
            grid.view(batch, nh, window, nw, window, channels).transpose(2, 3).reshape(-1, window * window, channels)
        )
        windows = self.attn(windows)
        grid = windows.view(batch, nh, nw, window, window, channels).transpose(2, 3).reshape(batch, ph, pw, channels)
        if pad_b or pad_r:
            grid = grid[:, :height, :width]
        x = shortcut + grid.reshape(batch, tokens, channels)
        # Token grid as a channels-last (B, C, H, W) view: the depthwise conv needs no copies.
        x = self.local_conv(x.view(batch, height, width, channels).permute(0, 3, 1, 2))
        x = x.permute(0, 2, 3, 1).reshape(batch, tokens, channels)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then a patch merging unless it is the last stage."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        out_dim: int | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, input_resolution, num_heads, window_size) for _ in range(depth))
        self.downsample = PatchMerging(input_resolution, dim, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT as MobileSAM configures it (TinyViT-5M widths), with SAM's 256-channel neck."""

    def __init__(
        self,
        img_size: int = 1024,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        out_chans: int = 256,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        patches = img_size // 4
        layers: list[nn.Module] = []
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            # The last merging keeps the resolution (stride 1), so stage 3 runs at stage 2's size.
            resolution = patches // (2 ** (i - 1 if i == 3 else i))
            out_dim = embed_dims[i + 1] if i + 1 < len(embed_dims) else None
            if i == 0:
                layers.append(ConvLayer(dim, (resolution, resolution), depth, out_dim))
            else:
                layers.append(BasicLayer(dim, (resolution, resolution), depth, num_heads[i], window_sizes[i], out_dim))
        self.layers = nn.ModuleList(layers)
        self.final_resolution = patches // 4
        # The classifier head ships in mobile_sam.pt; it is never used for segmentation.
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last convolutions are faster on CPU (oneDNN) and make token views free.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        batch, _, channels = x.shape
        side = self.final_resolution
        x = x.view(batch, side, side, channels).permute(0, 3, 1, 2)
        return self.neck(x)
