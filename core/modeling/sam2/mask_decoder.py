"""SAM 2's mask decoder for images, plain and differentiable: prompt tokens and the image embedding
in, low-res mask logits, IoU predictions and an object score out.

It is SAM 1's decoder with three additions:

- an object-score token in front of the IoU and mask tokens, read by ``pred_obj_score_head`` (an
  MLP giving one logit per prompt: does the object exist; for images its value is informative
  only, nothing below depends on it);
- high-resolution features: the upscaling adds the image encoder's stride-8 and stride-4 maps,
  projected by ``conv_s1`` / ``conv_s0`` (which live here, in the checkpoints' decoder keys, but
  run once per image, see ``Sam2.embed``): ``act1(ln1(dc1(src) + feat_s1))``, then
  ``act2(dc2(.) + feat_s0)``;
- IoU predictions through a sigmoid, and for single-mask output the dynamic choice of the
  official ``build_sam2(apply_postprocessing=True)``: the single-mask token's mask is kept when its
  stability score (area above +0.05 over area above -0.05) is at least 0.98, otherwise the best
  of the three multimask outputs by predicted IoU is returned instead.

The two-way transformer is passed in: SAM 1's plain one (``samkit.modeling.transformer``), whose
structure SAM 2 keeps, with SAM 2's key names for its MLPs (``model.default_transformer``).
``transformer(image (B, C, h, w), image_pe (B, C, h, w), tokens (B, T, C)) -> (tokens, image
tokens (B, h*w, C))``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..common import MLP, LayerNorm2d


class Sam2MaskPrediction(NamedTuple):
    """What the decoder returns for B prompts."""

    masks: torch.Tensor  # (B, M, 256, 256) low-res mask logits; M = 3 (multimask) or 1
    iou_predictions: torch.Tensor  # (B, M) in [0, 1]
    object_score_logits: torch.Tensor  # (B, 1)


def stability_scores(mask_logits: torch.Tensor, delta: float) -> torch.Tensor:
    """IoU between the masks thresholded at +delta and at -delta: (..., H, W) -> (...); 1 for empty masks."""
    flat = mask_logits.flatten(-2)
    inner = (flat > delta).sum(-1).float()
    outer = (flat > -delta).sum(-1).float()
    return torch.where(outer > 0, inner / outer, 1.0)


class Sam2MaskDecoder(nn.Module):
    """Tokens [object score, IoU, 4 mask tokens] + prompt tokens through the two-way transformer;
    the mask tokens become hypernetwork weights over the upscaled image features."""

    def __init__(
        self,
        transformer: nn.Module,
        transformer_dim: int = 256,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
    ) -> None:
        super().__init__()
        dim = transformer_dim
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.obj_score_token = nn.Embedding(1, dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        # projections of the encoder's stride-4 and stride-8 levels, added during upscaling
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def project_high_res(self, feat_s0: torch.Tensor, feat_s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's 256-channel stride-4 and stride-8 maps -> the decoder's high-res features
        (B, 32, 256, 256) and (B, 64, 128, 128); done once per image."""
        return self.conv_s0(feat_s0), self.conv_s1(feat_s1)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
        multimask_output: bool,
    ) -> Sam2MaskPrediction:
        """image_embeddings (1 or B, C, 64, 64), image_pe (1, C, 64, 64), sparse (B, N, C), dense
        (1 or B, C, 64, 64), high_res_features (projected, 1 or B each); the image side is shared
        by all B prompts when its batch is 1. Multimask: the three multimask outputs; otherwise one
        mask per prompt (dynamically chosen in eval mode, see the module doc)."""
        masks, iou, object_score = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res_features
        )
        if multimask_output:
            masks, iou = masks[:, 1:], iou[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou = self.select_stable_single_mask(masks, iou)
        else:
            masks, iou = masks[:, :1], iou[:, :1]
        return Sam2MaskPrediction(masks, iou, object_score)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All four masks (B, 4, 256, 256), their IoU predictions (B, 4) and the object score (B, 1)."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)

        src = image_embeddings.expand(batch, -1, -1, -1) + dense_prompt_embeddings
        pos = image_pe.expand(batch, -1, -1, -1)
        _, channels, height, width = src.shape
        hs, src = self.transformer(src, pos, tokens)
        object_token_out = hs[:, 0]
        iou_token_out = hs[:, 1]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens]

        src = src.transpose(1, 2).reshape(batch, channels, height, width)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled = act1(ln1(dc1(src) + feat_s1))
        upscaled = act2(dc2(upscaled) + feat_s0)

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, 4, C/8)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        iou = torch.sigmoid(self.iou_prediction_head(iou_token_out))
        object_score = self.pred_obj_score_head(object_token_out)
        return masks, iou, object_score

    def select_stable_single_mask(
        self, masks: torch.Tensor, iou: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prompt: the single-mask token's mask if it is stable, else the multimask output with
        the highest predicted IoU. (B, 4, H, W), (B, 4) -> (B, 1, H, W), (B, 1)."""
        best = iou[:, 1:].argmax(dim=-1) + 1
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks, best_iou = masks[rows, best].unsqueeze(1), iou[rows, best].unsqueeze(1)
        stable = stability_scores(masks[:, 0], self.dynamic_multimask_stability_delta)
        stable = stable >= self.dynamic_multimask_stability_thresh  # (B,)
        out_masks = torch.where(stable[:, None, None, None], masks[:, :1], best_masks)
        out_iou = torch.where(stable[:, None], iou[:, :1], best_iou)
        return out_masks, out_iou
