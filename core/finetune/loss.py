"""SAM's training loss, on the decoder's low-res logits.

- Mask: focal + dice at 20:1 (SAM paper, App. A; sam2 `training/loss_fns.py` weights mask 20,
  dice 1), focal with alpha 0.25 and gamma 2 (sam2's `sigmoid_focal_loss`). With several output
  masks (an ambiguous single point) only the mask with the lowest 20 * focal + dice is
  back-propagated, so each output may specialise on one reading of the prompt.
- IoU head: the error between each output's predicted IoU and the IoU its mask actually has
  with the ground truth, averaged over every output (sam2.1's fine-tuning config,
  `supervise_all_iou: true`), weight 1: squared (SAM paper, `iou_loss="mse"`) or absolute
  (sam2, `iou_use_l1_loss: true`, `iou_loss="l1"`; each family says which).
- Object score (families that predict one, SAM 2): binary cross-entropy towards "object
  present", weight 1 (sam2); every training object has a non-empty mask.

Only the low-res cells that show the image count (not the padding of a non-square image).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0
OBJECT_WEIGHT = 1.0
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


class MaskLoss(NamedTuple):
    """Per-object losses (B,) of one decoder call; `total` carries the gradient."""

    total: torch.Tensor  # weighted sum, per object
    focal: torch.Tensor
    dice: torch.Tensor
    iou: torch.Tensor
    object: torch.Tensor
    selected: torch.Tensor  # (B,) index of the output mask that was back-propagated
    actual_iou: torch.Tensor  # (B, M) the outputs' IoU with the ground truth (no gradient)


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Focal loss per element (RetinaNet's, as sam2 computes it)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    return alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA


def mask_loss(
    logits: torch.Tensor,
    iou_predictions: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    object_score_logits: torch.Tensor | None = None,
    iou_loss: str = "mse",
) -> MaskLoss:
    """logits (B, M, h, w), iou_predictions (B, M), target (B, h, w) in {0, 1}, valid (h, w) bool,
    object_score_logits (B, 1) or None, iou_loss "mse" or "l1" -> per-object losses (see the
    module docstring)."""
    if iou_loss not in ("mse", "l1"):
        raise ValueError(f"iou_loss must be 'mse' or 'l1', got {iou_loss!r}")
    logits = logits.float()[..., valid]  # (B, M, K)
    target = target.float()[..., valid][:, None]  # (B, 1, K)
    focal = sigmoid_focal(logits, target.expand_as(logits)).mean(-1)  # (B, M)
    prob = logits.sigmoid()
    dice = 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)  # (B, M)
    combined = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice
    selected = combined.detach().argmin(dim=1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    with torch.no_grad():
        predicted = logits > 0
        truth = target > 0.5
        intersection = (predicted & truth).sum(-1).float()
        union = (predicted | truth).sum(-1).float()
        actual_iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    error = iou_predictions.float() - actual_iou
    iou = (error.abs() if iou_loss == "l1" else error**2).mean(-1)  # (B,)
    if object_score_logits is not None:
        present = torch.ones_like(object_score_logits, dtype=torch.float32)
        obj = F.binary_cross_entropy_with_logits(object_score_logits.float(), present, reduction="none").mean(-1)
    else:
        obj = torch.zeros_like(iou)
    total = combined[rows, selected] + IOU_WEIGHT * iou + OBJECT_WEIGHT * obj
    return MaskLoss(total, focal[rows, selected], dice[rows, selected], iou, obj, selected, actual_iou)
