"""SAM's mask decoder: image embedding + prompt embeddings in, low-res mask logits and IoU predictions out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import PreparedImage, TwoWayTransformer

# Prompts decoded together, by device type. On a CPU the per-prompt image tokens (4 MB each in
# fp32) and the upscaling's intermediates should stay in the last-level cache: measured on a
# 32 MB L3, 2 prompts per pass are ~1.6x faster than 32. A GPU wants large batches.
DECODER_CHUNK = {"cpu": 2, "other": 64}


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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings (1, C, 64, 64), image_pe (1, C, 64, 64), sparse (B, N, C), dense (B, C, 64, 64)
        -> low-res mask logits (B, M, 256, 256) and IoU predictions (B, M); M is 3 with
        multimask_output, else 1."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
            # One dense embedding broadcast to every prompt (no mask input): keep batch 1 so the
            # image-side work is shared by all prompts.
            dense_prompt_embeddings = dense_prompt_embeddings[:1]
        prepared = None
        if dense_prompt_embeddings.shape[0] == 1 and image_embeddings.shape[0] == 1:
            prepared = self._prepared_image(image_embeddings, image_pe, dense_prompt_embeddings)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        chunk = decoder_chunk(image_embeddings.device)
        masks, iou_pred = [], []
        for start in range(0, num_prompts, chunk):
            stop = min(start + chunk, num_prompts)
            dense = dense_prompt_embeddings if dense_prompt_embeddings.shape[0] == 1 else dense_prompt_embeddings[start:stop]
            chunk_masks, chunk_iou = self.predict_masks(
                image_embeddings, image_pe, sparse_prompt_embeddings[start:stop], dense, prepared, selected
            )
            masks.append(chunk_masks)
            iou_pred.append(chunk_iou)
        masks_all = torch.cat(masks) if len(masks) > 1 else masks[0]
        iou_all = torch.cat(iou_pred) if len(iou_pred) > 1 else iou_pred[0]
        return masks_all, iou_all

    def _prepared_image(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor) -> PreparedImage:
        """The transformer's image-only work, reused while the same image is decoded again
        (every later click on an image, every point batch of segment-everything)."""
        autocast = torch.is_autocast_enabled(image_embeddings.device.type)
        cached = self._prepared_cache
        if (
            cached is not None
            and cached[0] == autocast
            and cached[1].matches(image_embeddings)
            and cached[2].matches(image_pe)
            and cached[3].matches(dense)
        ):
            return cached[4]
        prepared = self.transformer.prepare_image(image_embeddings + dense, image_pe)
        self._prepared_cache = (autocast, SameTensor(image_embeddings), SameTensor(image_pe), SameTensor(dense), prepared)
        return prepared

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        prepared: PreparedImage | None = None,
        selected: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B, M, 256, 256) and IoU predictions (B, M) for B prompts, M the `selected` mask
        tokens (all four by default). `prepared` is prepare_image of the batch-1 image + dense."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
        tokens = torch.cat([output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], dim=1)

        src = None if prepared is not None else image_embeddings + dense_prompt_embeddings
        hs, keys = self.transformer(src, image_pe, tokens, prepared)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, selected]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        hypernetworks = list(enumerate(self.output_hypernetworks_mlps))[selected]
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in hypernetworks], dim=1)
        height, width = image_embeddings.shape[2:]
        return self.upscale_masks(keys, hyper_in, height, width), iou_pred

    def upscale_masks(self, keys: torch.Tensor, hyper_in: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """output_upscaling followed by the hypernetwork product, on channels-last tokens.

        keys (B, H*W, C) image tokens, hyper_in (B, M, C/8) -> mask logits (B, M, 4H, 4W).
        Both transposed convolutions have kernel 2 and stride 2, so each is a per-pixel matrix
        product that writes a 2x2 block of outputs: computed that way, the normalisation runs over
        a contiguous axis and no feature map is ever transposed; only the final logits are.
        """
        conv1, norm, _, conv2, _ = self.output_upscaling
        batch = keys.shape[0]
        # ConvTranspose2d weight (in, out, 2, 2) -> (in, 2 * 2 * out) ordered (di, dj, out).
        weight1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1)
        bias1 = conv1.bias.repeat(4)
        x = torch.addmm(bias1, keys.reshape(-1, keys.shape[-1]), weight1)  # (B*H*W, 4 * C1)
        x = x.view(-1, conv1.out_channels)
        x = F.gelu(F.layer_norm(x, (conv1.out_channels,), norm.weight, norm.bias, norm.eps))
        weight2 = conv2.weight.permute(0, 2, 3, 1).reshape(conv2.in_channels, -1)
        bias2 = conv2.bias.repeat(4)
        x = F.gelu(torch.addmm(bias2, x, weight2))  # (B*H*W*4, 4 * C2), ordered (ei, ej, out)
        # x is indexed [b, i, j, di, dj, ei, ej, c]; contract c with each mask's hypernetwork vector.
        x = x.view(batch, -1, conv2.out_channels)
        masks = torch.bmm(x, hyper_in.transpose(1, 2).to(x.dtype))  # (B, H*W*16, M)
        num_masks = hyper_in.shape[1]
        masks = masks.view(batch, height, width, 2, 2, 2, 2, num_masks)
        # pixel row = 4i + 2di + ei, column = 4j + 2dj + ej
        masks = masks.permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(batch, num_masks, 4 * height, 4 * width)
