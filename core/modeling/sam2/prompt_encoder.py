"""SAM 2's prompt encoder: SAM 1's, fed boxes as labelled corner points.

The SAM 2 image predictor never passes boxes to the prompt encoder as boxes: it puts each box's
two corners in front of the points with labels 2 (top-left) and 3 (bottom-right), and the
encoder adds ``point_embeddings[2]`` / ``[3]`` to them. Since ``boxes`` is then always None, the
padding point (label -1) is appended to every prompt, boxes included (SAM 1 pads only prompts
without a box). Everything else (weights, Fourier features, mask downscaling, dense PE) is SAM 1's.
"""

from __future__ import annotations

import torch

from ..prompt_encoder import PromptEncoder

BOX_CORNER_LABELS = (2, 3)  # top-left, bottom-right


class Sam2PromptEncoder(PromptEncoder):
    """SAM 1's prompt encoder with the box-corner labels 2 and 3 embedded on points."""

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        embedding = super()._embed_points(points, labels, pad)
        labels = labels[..., None]
        if pad:  # the padding point SAM 1's encoder appended (label -1)
            labels = torch.cat([labels, torch.full_like(labels[:, :1], -1)], dim=1)
        for label in BOX_CORNER_LABELS:
            embedding = embedding + torch.where(labels == label, self.point_embeddings[label].weight, 0.0)
        return embedding
