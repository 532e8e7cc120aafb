"""Segment-everything with SAM 2: samkit.MaskGenerator against the official SAM2AutomaticMaskGenerator
(sam2 1.1.0) on the same perturbed SAM 2.1 Hiera-T weights (tests/core/sam2_oracle.py).

Random weights give large blob-like masks that box NMS folds together, so the generators run with
box_nms_thresh 1.0 (nothing suppressed) and low thresholds, and every candidate mask is compared,
matched by point, predicted IoU and mask IoU (test_generator_parity.assert_same_records):

- once end to end on the real network (Hiera-T image encoder and all), the official defaults
  otherwise;
- then, for the settings SAM 2's generator adds (use_m2m, multimask_output, mask_threshold) and
  crops, with one cheap image encoder shared by both models (``StandInImageEncoder``: pooled
  pixels through fixed 1x1 convolutions, so each crop gets its own features) and the real prompt
  encoder and mask decoder. The Hiera encoder's parity is proven in test_sam2_parity.py; this keeps
  five encodings per crop run to milliseconds. A high mask_threshold makes the masks small, so
  that masks inside the crops survive the crop-edge filter and crops really contribute.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import samkit
from samkit.options import GeneratorOptions

try:
    from . import sam2_oracle
    from .test_generator_parity import assert_same_records
except ImportError:
    import sam2_oracle
    from test_generator_parity import assert_same_records

# every candidate reaches the records: 3 per grid point
ALL = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
POINTS = 4


@pytest.fixture(scope="module")
def image(images_dir) -> np.ndarray:
    # small: the masks are upscaled to the image (and stretched to 1024 for the encoder anyway)
    return np.asarray(Image.open(images_dir / "truck.jpg").convert("RGB").resize((360, 240), Image.BILINEAR))


@pytest.fixture(scope="module")
def models():
    """(official SAM2Base, ours), the same perturbed SAM 2.1 Hiera-T weights."""
    official, path = sam2_oracle.official_model("tiny")
    return official, samkit.load_model(path, device="cpu")


def official_generator(model, **settings):
    sam2_oracle.official_sam2()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    with sam2_oracle.warnings.catch_warnings():
        sam2_oracle.warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
        return SAM2AutomaticMaskGenerator(model, **settings)


def test_generator_defaults_are_sam2s(models):
    """pred_iou_thresh and mask_threshold left to the family take SAM2AutomaticMaskGenerator's
    values; the others are the official generator's too."""
    official, ours = models
    theirs = official_generator(official)
    generator = samkit.MaskGenerator(ours)
    for name in GeneratorOptions.names():
        if hasattr(theirs, name):
            assert getattr(generator.options, name) == getattr(theirs, name), name
    assert generator.options.pred_iou_thresh == 0.8 and generator.options.mask_threshold == 0.0
    assert not generator.options.use_m2m and generator.options.multimask_output
    # a SAM 1 model keeps SAM 1's
    assert samkit.GeneratorOptions().resolved(samkit.build_sam("vit_b")).pred_iou_thresh == 0.88


def test_generator_matches_official_end_to_end(models, image):
    official, ours = models
    settings = dict(points_per_side=POINTS, **ALL)
    theirs = official_generator(official, **settings).generate(image)
    records = samkit.MaskGenerator(ours, **settings).generate(image)
    assert len(theirs) == 3 * POINTS**2
    assert len({round(r["predicted_iou"], 6) for r in theirs}) > 10  # the candidates differ
    assert_same_records(records, theirs, "binary_mask", image.shape[:2], pred_iou_tol=1e-4)


# ---------------------------------------------------------------------------------------------
# the added settings and crops, with a shared stand-in image encoder
# ---------------------------------------------------------------------------------------------


class StandInLevels(nn.Module):
    """The three feature maps of SAM 2's image encoder (256 channels at 256x256, 128x128 and 64x64
    for a 1024 input) from average-pooled pixels through fixed, seeded 1x1 convolutions."""

    img_size = 1024

    def __init__(self, seed: int = 5) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.projections = nn.ModuleList()
        for _ in range(3):
            conv = nn.Conv2d(3, 256, 1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator))
            self.projections.append(conv)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [conv(F.avg_pool2d(x, stride)) for conv, stride in zip(self.projections, (4, 8, 16))]


class OfficialStandIn(nn.Module):
    """The levels as the official ImageEncoder returns them (positional encodings unused for images)."""

    def __init__(self, levels: StandInLevels) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> dict:
        fpn = self.levels(x)
        return {"vision_features": fpn[-1], "vision_pos_enc": [torch.zeros_like(t) for t in fpn],
                "backbone_fpn": fpn}


@functools.lru_cache(maxsize=None)
def stand_in_models():
    """(official, ours) with the same stand-in image encoder and the perturbed decoder weights."""
    _, path = sam2_oracle.official_model("tiny")
    levels = StandInLevels().eval()
    official = sam2_oracle.build_official("tiny")
    official.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    official.image_encoder = OfficialStandIn(levels)
    ours = samkit.load_model(path, device="cpu")
    ours.image_encoder = levels
    return official.eval(), ours


CONFIGS = {
    "use_m2m": dict(points_per_side=POINTS, use_m2m=True, **ALL),
    # the filters at about the median of the candidates' predicted IoU and stability
    "single mask, thresholds, coco_rle": dict(
        points_per_side=POINTS, multimask_output=False, pred_iou_thresh=0.48, stability_score_thresh=0.9,
        box_nms_thresh=1.0, output_mode="coco_rle",
    ),
    "crops, mask_threshold, use_m2m, uncompressed_rle": dict(
        points_per_side=POINTS, crop_n_layers=1, crop_n_points_downscale_factor=2, crop_nms_thresh=1.0,
        mask_threshold=8.0, use_m2m=True, output_mode="uncompressed_rle", **ALL,
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_generator_matches_official_settings(name, image):
    settings = CONFIGS[name]
    official, ours = stand_in_models()
    theirs = official_generator(official, **settings).generate(image)
    records = samkit.MaskGenerator(ours, **settings).generate(image)
    mode = settings.get("output_mode", "binary_mask")
    masks_per_point = 3 if settings.get("multimask_output", True) else 1
    if name.startswith("crops"):  # masks from inside the crops are kept, besides the whole image's
        whole = [0, 0, image.shape[1], image.shape[0]]
        assert 3 * POINTS**2 < len(theirs) and sum(r["crop_box"] != whole for r in theirs) >= 3
    elif settings["pred_iou_thresh"] > 0:  # the filters remove some candidates, not all
        assert 0 < len(theirs) < masks_per_point * POINTS**2
    else:
        assert len(theirs) == masks_per_point * POINTS**2
    assert_same_records(records, theirs, mode, image.shape[:2], pred_iou_tol=1e-4)
