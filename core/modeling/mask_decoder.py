"""SAM's mask decoder, plain: image embedding + prompt embeddings in, low-res mask logits and IoU
predictions out.

The reference for the fast inference engine (`samkit.fast.mask_decoder.FastMaskDecoder`, which
reads these modules' weights), and the module that training and ONNX export use. Same
submodule names, state_dict keys and call signatures as the official segment-anything module.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts 1 + num_multimask_outputs masks per prompt and an IoU estimate for each.

    transformer: the two-way transformer (by default SAM 1's: depth 2, 8 heads, MLP width 2048).
    activation: between the two transposed convolutions that upscale the image tokens 4x.
    """

    def __init__(
        self,
        *,
        transformer_dim: int = 256,
        transformer: nn.Module | None = None,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        if transformer is None:
            transformer = TwoWayTransformer(depth=2, embedding_dim=transformer_dim, num_heads=8, mlp_dim=2048)
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
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
        """image_embeddings (1 or B, C, H, W), image_pe (1, C, H, W), sparse (B, N, C),
        dense (1 or B, C, H, W) -> mask logits (B, M, 4H, 4W) and IoU predictions (B, M):
        M = num_multimask_outputs masks with multimask_output, else the single-mask output."""
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All num_mask_tokens masks (B, 1 + num_multimask_outputs, 4H, 4W) and their IoU
        predictions; see forward."""
        batch = sparse_prompt_embeddings.shape[0]
        # the output tokens (IoU, then one per mask) go before each prompt's own tokens
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        src = (image_embeddings + dense_prompt_embeddings).expand(batch, -1, -1, -1)
        pos_src = image_pe.expand(batch, -1, -1, -1)
        _, channels, height, width = src.shape
        hs, keys = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        # Each mask is the dot product of its token (through its hypernetwork MLP) with every
        # pixel of the upscaled image tokens.
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(batch, channels, height, width))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, up_channels, up_height, up_width = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(batch, up_channels, up_height * up_width))
        masks = masks.reshape(batch, -1, up_height, up_width)
        return masks, self.iou_prediction_head(iou_token_out)
