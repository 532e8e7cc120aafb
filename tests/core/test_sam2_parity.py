"""SAM 2 / 2.1 image networks against the official ``sam2`` package, on the same perturbed weights.

The official models are built from the package's own hydra configs (``build_sam2``), every weight
perturbed and saved in the official ``{"model": state_dict}`` format (``sam2_oracle``); ours load
those keys unchanged.

- Structure, all four sizes: the same blocks (widths, heads, windows, query pooling) and exactly
  the official ``image_encoder.*`` keys and shapes, loaded strictly.
- Trunk and neck, tiny and base-plus: every stage output and every FPN level on a 256x256 input
  (where the windows of 14 and 7 of the last two stages need padding), to float32 rounding. Small and large run
  on smaller inputs with perturbed norms and positional embeddings only (perturbing all of
  large's 224 M weights costs more than the check).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from samkit.modeling.backbones.hiera import HIERA_CONFIGS, plan_blocks
from samkit.modeling.backbones.sam2_encoder import build_sam2_image_encoder

try:
    from . import oracle, sam2_oracle
except ImportError:
    import oracle
    import sam2_oracle

REL_TOL = 1e-5  # max |ours - official| relative to max |official|, per tensor


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = REL_TOL, what: str = "") -> float:
    """Same shape and max |diff| <= rel * max |ref|; returns the measured relative difference."""
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    scale = float(ref.abs().max())
    diff = float((ours.float() - ref.float()).abs().max())
    assert diff <= rel * scale, f"{what}: max |diff| {diff:.3g} > {rel:g} * {scale:.3g}"
    return diff / scale


def encoder_weights(state_dict: dict) -> dict:
    prefix = "image_encoder."
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


@pytest.fixture(scope="module", params=["tiny", "base_plus"])
def perturbed(request):
    """(size, official SAM2Base with perturbed weights, the state_dict read back from its checkpoint)."""
    model, path = sam2_oracle.official_model(request.param)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return request.param, model, state_dict


@functools.lru_cache(maxsize=None)
def fresh_official_encoder(size: str) -> torch.nn.Module:
    """The image encoder of a freshly initialised official model (not perturbed; do not modify)."""
    return sam2_oracle.build_official(size).image_encoder.eval()


@pytest.mark.parametrize("size", sam2_oracle.SIZES)
def test_encoder_structure_and_keys(size):
    official = fresh_official_encoder(size)
    ours = build_sam2_image_encoder(size)
    # the same keys and shapes, loaded strictly
    theirs = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
    ours.load_state_dict(official.state_dict(), strict=True)
    # the same block plan: widths, heads, windows (0 = global) and query pooling per block
    plan = plan_blocks(HIERA_CONFIGS[size])
    assert len(plan) == len(official.trunk.blocks)
    for i, (spec, block) in enumerate(zip(plan, official.trunk.blocks)):
        got = (spec.dim, spec.dim_out, spec.num_heads, spec.window_size, spec.pool)
        want = (block.dim, block.dim_out, block.attn.num_heads, block.window_size, block.q_stride is not None)
        assert got == want, (size, i, got, want)
    assert ours.trunk.stage_ends == official.trunk.stage_ends
    assert ours.trunk.channel_list == official.trunk.channel_list == official.neck.backbone_channel_list
    assert list(ours.neck.top_down_levels) == official.neck.fpn_top_down_levels
    assert ours.scalp == official.scalp == 1


def test_perturbed_checkpoint_moves_every_encoder_weight():
    model, path = sam2_oracle.official_model("tiny")
    fresh = sam2_oracle.build_official("tiny")
    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    before = {k: v for k, v in fresh.state_dict().items() if k.startswith("image_encoder.")}
    assert not oracle.unperturbed_keys(before, saved)


def test_trunk_and_neck_match_official(perturbed):
    size, model, state_dict = perturbed
    ours = build_sam2_image_encoder(size).eval()
    ours.load_state_dict(encoder_weights(state_dict), strict=True)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref_levels = model.image_encoder.trunk(x)
        our_levels = ours.trunk(x)
        assert len(our_levels) == len(ref_levels) == 4
        for i, (a, b) in enumerate(zip(our_levels, ref_levels)):
            assert_close(a, b, what=f"{size} trunk stage {i}")
        ref_fpn = model.image_encoder(x)["backbone_fpn"]  # after scalp: three levels
        our_fpn = ours(x)
        assert len(our_fpn) == len(ref_fpn) == 3
        for i, (a, b) in enumerate(zip(our_fpn, ref_fpn)):
            assert_close(a, b, what=f"{size} FPN level {i}")


@torch.no_grad()
def _perturb_norms_and_pos_embeds(encoder: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, p in encoder.named_parameters():
        if "norm" in name or "pos_embed" in name:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("size,side", [("small", 256), ("large", 128)])
def test_small_and_large_trunks_run_like_official(size, side):
    official = copy.deepcopy(fresh_official_encoder(size))
    _perturb_norms_and_pos_embeds(official, seed=5)
    ours = build_sam2_image_encoder(size).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        for i, (a, b) in enumerate(zip(ours(x), official(x)["backbone_fpn"])):
            assert_close(a, b, what=f"{size} FPN level {i}")


def test_input_size_must_tile_the_window_embedding():
    encoder = build_sam2_image_encoder("tiny")
    with pytest.raises(ValueError, match="multiples of 32"):
        encoder(torch.zeros(1, 3, 100, 96))
