"""SAM's mask decoder: image embedding + prompt embeddings in, low-res mask logits and IoU predictions out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import PreparedImage, TwoWayTransformer

# Prompts decoded together: large enough to keep the matrix products efficient, small enough that the
# per-prompt copies of the 64x64x256 image tokens stay in a few hundred MB.
DECODER_CHUNK = 32


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
        masks, iou_pred = [], []
        for start in range(0, num_prompts, DECODER_CHUNK):
            stop = min(start + DECODER_CHUNK, num_prompts)
            dense = dense_prompt_embeddings[start:stop]
            chunk_masks, chunk_iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings[start:stop], dense)
            masks.append(chunk_masks)
            iou_pred.append(chunk_iou)
        masks_all = torch.cat(masks) if len(masks) > 1 else masks[0]
        iou_all = torch.cat(iou_pred) if len(iou_pred) > 1 else iou_pred[0]
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks_all[:, selected], iou_all[:, selected]

    def _prepared_image(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor) -> PreparedImage:
        """The transformer's image-only work, reused while the same image is decoded again
        (every later click on an image, every point batch of segment-everything)."""
        cached = self._prepared_cache
        autocast = torch.is_autocast_enabled(image_embeddings.device.type)
        # The cache holds the embedding itself, so its identity cannot pass to a new tensor.
        if (
            cached is not None
            and cached[0] is image_embeddings
            and cached[1] == autocast
            and torch.equal(cached[2], image_pe)
            and torch.equal(cached[3], dense)
        ):
            return cached[4]
        prepared = self.transformer.prepare_image(image_embeddings + dense, image_pe)
        self._prepared_cache = (image_embeddings, autocast, image_pe, dense, prepared)
        return prepared

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All num_mask_tokens masks (B, 4, 256, 256) and IoU predictions (B, 4) for B prompts."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
        tokens = torch.cat([output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], dim=1)

        if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
            # One dense embedding broadcast to every prompt (no mask input): keep batch 1 so the
            # transformer shares the image-side work between prompts.
            dense_prompt_embeddings = dense_prompt_embeddings[:1]
        prepared = None
        if dense_prompt_embeddings.shape[0] == 1 and image_embeddings.shape[0] == 1:
            prepared = self._prepared_image(image_embeddings, image_pe, dense_prompt_embeddings)
        src = image_embeddings + dense_prompt_embeddings
        hs, keys = self.transformer(src, image_pe, tokens, prepared)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        height, width = image_embeddings.shape[2:]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = self.upscale_masks(keys, hyper_in, height, width)
        return masks, self.iou_prediction_head(iou_token_out)

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
