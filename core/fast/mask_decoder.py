"""SAM's mask decoder: image embedding + prompt embeddings in, low-res mask logits and IoU predictions out.

The first transposed convolution of the upscaling is the decoder's largest product per prompt
(N = 4096 image tokens times a C x 4*C1 = 256 x 256 matrix). With a prepared image it is
computed from the final image tokens in factored form (factored.py): the shared input tokens
times the gain-scaled weight once per image, scaled per token, plus a rank-(2M + 3) product per
prompt. That costs ~2.3x fewer operations per prompt (measured ~2x faster on a CPU) and agrees
with the direct product to float32 rounding (tests/core/test_decoder_parity.py). Under autocast,
and while autograd records, the direct product is used.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.common import MLP, LayerNorm2d
from .factored import FactoredWeight, factor_weight
from .transformer import PreparedImage, TwoWayTransformer

# Prompts decoded together, by device type. On a CPU the per-prompt image tokens (4 MB each in
# fp32) should stay in the last-level cache: measured on a 32 MB L3 (64 prompts, factored
# attention), 8 prompts per pass are ~1.25x faster than 2 and ~1.4x faster than 16. A GPU
# wants large batches.
DECODER_CHUNK = {"cpu": 8, "other": 64}
# Image tokens upscaled per step (see MaskDecoder.upscale_masks).
UPSCALE_ROWS = 1024


def decoder_chunk(device: torch.device) -> int:
    """How many prompts the decoder runs through the network at once on `device`."""
    return DECODER_CHUNK["cpu" if device.type == "cpu" else "other"]


class SameTensor:
    """Recognises a tensor again: cheaply when it is the same memory unchanged, else by values.

    It holds the tensor, so its memory cannot pass to another tensor while held, and the
    version counter (shared by all views of that memory) moves on every in-place change. A view
    with the same memory, layout and version therefore has the same values: the decoder gets a
    new expand() view of one weight, or the prompt encoder's kept positional encoding, on every
    call. Inference tensors keep no version counter, so they, like anything else, are compared
    with a copy of the values taken when the tensor was first seen.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.version = None if tensor.is_inference() else tensor._version
        self.values = tensor.clone()

    def _same_memory(self, other: torch.Tensor) -> bool:
        mine = self.tensor
        return (
            self.version is not None
            and not other.is_inference()
            and other.data_ptr() == mine.data_ptr()
            and other.shape == mine.shape
            and other.stride() == mine.stride()
            and other.dtype == mine.dtype
            and other.device == mine.device
            and other._version == self.version
            and mine._version == self.version
        )

    def matches(self, other: torch.Tensor) -> bool:
        if self._same_memory(other):
            return True
        values = self.values
        return (
            other.shape == values.shape and other.dtype == values.dtype and other.device == values.device
            and torch.equal(other, values)
        )


class DecoderImage(NamedTuple):
    """What the decoder keeps of one image with its dense prompt embedding (both batch 1): the
    transformer's image-side work and the first upscaling convolution in factored form (None
    under autocast, or while gradients are recorded: the direct products are taken)."""

    transformer: PreparedImage
    upscaling: FactoredWeight | None


class MaskDecoder(nn.Module):
    """Predicts 1 + num_multimask_outputs masks and their IoU for each prompt."""

    def __init__(
        self,
        transformer_dim: int = 256,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = TwoWayTransformer(depth=2, embedding_dim=transformer_dim, num_heads=8, mlp_dim=2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        self._prepared_cache: tuple | None = None

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        best_only: bool = False,
        region: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings (1, C, 64, 64), image_pe (1, C, 64, 64), sparse (B, N, C), dense (B, C, 64, 64)
        -> low-res mask logits (B, M, 256, 256) and IoU predictions (B, M); M is 3 with
        multimask_output, else 1. best_only returns, per prompt, only the mask of those M with
        the highest predicted IoU (M = 1); the others are never upscaled. region (rows, cols):
        only the masks of that many image token rows and columns from the top left are upscaled,
        (B, M, 4 * rows, 4 * cols); each token's 4x4 mask pixels depend on that token alone, so
        they are the same values."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
            # One dense embedding broadcast to every prompt (no mask input): keep batch 1 so the
            # image-side work is shared by all prompts.
            dense_prompt_embeddings = dense_prompt_embeddings[:1]
        prepared = None
        if dense_prompt_embeddings.shape[0] == 1 and image_embeddings.shape[0] == 1:
            prepared = self.prepare_image(image_embeddings, image_pe, dense_prompt_embeddings)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        chunk = decoder_chunk(image_embeddings.device)
        masks, iou_pred = [], []
        for start in range(0, num_prompts, chunk):
            stop = min(start + chunk, num_prompts)
            dense = (
                dense_prompt_embeddings
                if dense_prompt_embeddings.shape[0] == 1
                else dense_prompt_embeddings[start:stop]
            )
            chunk_masks, chunk_iou = self.predict_masks(
                image_embeddings,
                image_pe,
                sparse_prompt_embeddings[start:stop],
                dense,
                prepared,
                selected,
                best_only,
                region,
            )
            masks.append(chunk_masks)
            iou_pred.append(chunk_iou)
        masks_all = torch.cat(masks) if len(masks) > 1 else masks[0]
        iou_all = torch.cat(iou_pred) if len(iou_pred) > 1 else iou_pred[0]
        return masks_all, iou_all

    def prepare_image(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor
    ) -> DecoderImage:
        """The decoder's image-only work for image_embeddings (1, C, H, W) with one dense prompt
        embedding (1, C, H, W), valid for any sparse prompts on them.

        Kept (one image) while neither the inputs nor the weights change and no gradient is
        recorded, so every later click on an image, and every point batch of segment-everything,
        reuses it. Calling it right after an image is embedded makes the first click as fast
        as the next.
        """
        autocast = torch.is_autocast_enabled(image_embeddings.device.type)
        cacheable = not torch.is_grad_enabled()
        weights = self._weights_version() if cacheable else None
        cached = self._prepared_cache
        if (
            cacheable
            and cached is not None
            and cached[0] == (autocast, weights)
            and cached[1].matches(image_embeddings)
            and cached[2].matches(image_pe)
            and cached[3].matches(dense)
        ):
            return cached[4]
        factored = cacheable and not autocast and image_embeddings.dtype in (torch.float32, torch.float64)
        transformer = self.transformer.prepare_image(image_embeddings + dense, image_pe, factored)
        upscaling = None
        if factored:
            weight, bias = self.first_conv_weights()
            upscaling = factor_weight(
                transformer.keys[0], weight, bias, [layer.norm4 for layer in self.transformer.layers]
            )
        prepared = DecoderImage(transformer, upscaling)
        if cacheable:
            self._prepared_cache = (
                (autocast, weights), SameTensor(image_embeddings), SameTensor(image_pe), SameTensor(dense), prepared
            )
        return prepared

    def _weights_version(self) -> tuple[tuple[int, int], ...]:
        """Identity and version counter of every weight the kept image work was computed from
        (the transformer's and the first upscaling convolution's): the counter moves when a
        weight changes in place (load_state_dict, an optimiser step). Inference-tensor
        parameters keep no counter (-1)."""
        params = [*self.transformer.parameters(), *self.output_upscaling[0].parameters()]
        return tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in params)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        prepared: DecoderImage | None = None,
        selected: slice = slice(None),
        best_only: bool = False,
        region: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B, M, 256, 256) and IoU predictions (B, M) for B prompts, M the `selected` mask
        tokens (all four by default), or with best_only the one of them with the highest IoU
        prediction (M = 1). `prepared` is prepare_image of the batch-1 image + dense. region
        (rows, cols): masks of the top-left image tokens only, (B, M, 4 * rows, 4 * cols)."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
        tokens = torch.cat([output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], dim=1)

        src = None if prepared is not None else image_embeddings + dense_prompt_embeddings
        hypernetworks = list(enumerate(self.output_hypernetworks_mlps))[selected]
        # the IoU token and the selected mask tokens; the others' outputs are never read
        output_rows = [0] + [1 + i for i, _ in hypernetworks]
        hs, keys, factored_keys = self.transformer(
            src, image_pe, tokens, None if prepared is None else prepared.transformer, output_rows
        )
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, selected]
        mask_tokens_out = hs[:, 1:, :]  # in the order of hypernetworks
        if best_only:  # only the best mask is upscaled
            best = iou_pred.argmax(dim=1, keepdim=True)
            iou_pred = iou_pred.gather(1, best)
        if best_only and num_prompts == 1:  # a click: only the best token's hypernetwork runs
            j = int(best)
            hyper_in = hypernetworks[j][1](mask_tokens_out[:, j, :])[:, None]
        else:
            hyper_in = torch.stack([mlp(mask_tokens_out[:, j, :]) for j, (_, mlp) in enumerate(hypernetworks)], dim=1)
            if best_only:
                hyper_in = hyper_in[torch.arange(num_prompts, device=best.device)[:, None], best]
        grid = tuple(image_embeddings.shape[2:])
        height, width = grid if region is None else region
        if factored_keys is not None:
            first = factored_keys.times(prepared.upscaling, grid, region).view(-1, prepared.upscaling.constant.shape[0])
        else:
            weight, bias = self.first_conv_weights()
            keys = keys.reshape(keys.shape[0], *grid, keys.shape[-1])[:, :height, :width]
            first = torch.addmm(bias, keys.reshape(-1, keys.shape[-1]), weight)
        return self.upscale_masks(first, hyper_in, height, width), iou_pred

    def first_conv_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """output_upscaling's first ConvTranspose2d as a matrix (C, 4*C1) and bias (4*C1,).

        Both transposed convolutions have kernel 2 and stride 2, so each is a per-pixel matrix
        product that writes a 2x2 block of outputs; the columns are ordered (di, dj, out).
        """
        conv1 = self.output_upscaling[0]
        return conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1), conv1.bias.repeat(4)

    def upscale_masks(self, first: torch.Tensor, hyper_in: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The rest of output_upscaling and the hypernetwork product, on channels-last pixels.

        first (B*H*W, 4*C1) the first transposed convolution of the image tokens, hyper_in (B, M, C/8) -> mask logits
        (B, M, 4H, 4W). Computed pixel by pixel, the normalisation runs over a contiguous axis
        and no feature map is ever transposed; only the final logits are.
        """
        conv1, norm, _, conv2, _ = self.output_upscaling
        batch, num_masks = hyper_in.shape[:2]
        weight2 = conv2.weight.permute(0, 2, 3, 1).reshape(conv2.in_channels, -1)
        bias2 = conv2.bias.repeat(4)
        hyper_t = hyper_in.transpose(1, 2)
        pixels = height * width
        pieces = []
        # A few image tokens of one prompt at a time, so that each step's intermediates (up to
        # 8 MB per prompt at once) stay in a CPU's cache between the normalisation, convolution
        # and activations.
        for start in range(0, batch * pixels, pixels):
            for piece in first[start : start + pixels].split(UPSCALE_ROWS):
                x = F.gelu(
                    F.layer_norm(
                        piece.reshape(-1, conv1.out_channels), (conv1.out_channels,), norm.weight, norm.bias, norm.eps
                    )
                )
                x = F.gelu(torch.addmm(bias2, x, weight2))  # (tokens * 4, 4 * C2), ordered (ei, ej, out)
                # x is indexed [i, j, di, dj, ei, ej, c]; contract c with each mask's hypernetwork vector
                pieces.append(x.view(-1, conv2.out_channels) @ hyper_t[start // pixels].to(x.dtype))
        masks = torch.cat(pieces) if len(pieces) > 1 else pieces[0]  # (B*H*W*16, M)
        masks = masks.view(batch, height, width, 2, 2, 2, 2, num_masks)
        # pixel row = 4i + 2di + ei, column = 4j + 2dj + ej. Two reorderings, first (i, di) and
        # (j, dj), then (2i + di, ei) and (2j + dj, ej), are ~3x faster on a CPU than one 8-d permute.
        masks = masks.permute(0, 7, 1, 3, 2, 4, 5, 6).reshape(batch * num_masks, 2 * height, 2 * width, 2, 2)
        return masks.permute(0, 1, 3, 2, 4).reshape(batch, num_masks, 4 * height, 4 * width)
