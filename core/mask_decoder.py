"""SAM's mask decoder: image embedding + prompt embeddings in, low-res mask logits and IoU predictions out."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer

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
        src = image_embeddings + dense_prompt_embeddings
        hs, keys = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        channels, height, width = image_embeddings.shape[1:]
        src = keys.transpose(1, 2).reshape(num_prompts, channels, height, width)
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        batch, up_channels, up_height, up_width = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(batch, up_channels, up_height * up_width)).reshape(batch, -1, up_height, up_width)
        return masks, self.iou_prediction_head(iou_token_out)
