"""The fast Hiera trunk (samkit.fast.hiera, what Sam2.embed runs for float32 inference on a CPU)
against the plain trunk (samkit.modeling.backbones.hiera, itself proven against the official
sam2 in test_sam2_parity.py), on the same seeded, perturbed weights.

Every stage output to float32 rounding, for tiny at 1024 (windows that tile the grid) and for
base_plus at a smaller, non-square input (stage 3 and 4 windows padded, the pooled windows
cropped); Sam2.embed through the engine against embed(reference=True); when the engine steps
aside (autograd, autocast, a stand-in trunk); the kept positional embedding following the grid
and the weights.
"""

from __future__ import annotations

import pytest
import torch

from samkit.fast.hiera import FastHiera
from samkit.modeling.backbones.hiera import HIERA_CONFIGS, Hiera
from samkit.modeling.sam2.model import build_sam2

try:
    from . import oracle
except ImportError:
    import oracle

# float32 rounding: measured differences are <= 2e-6 of the largest value; 5x+ margin
REL_TOL = 1e-5


def max_rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return float((ours - ref).abs().max()) / float(ref.abs().max())


def perturbed_trunk(size: str, seed: int) -> Hiera:
    torch.manual_seed(seed)
    trunk = Hiera(HIERA_CONFIGS[size])
    oracle.perturb_(trunk, seed)
    return trunk.eval()


@pytest.mark.parametrize(
    "size, height, width",
    [("tiny", 1024, 1024), ("base_plus", 448, 640)],
)
def test_stage_outputs_match_the_plain_trunk(size, height, width):
    trunk = perturbed_trunk(size, seed=5)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(6))
    engine = FastHiera.for_trunk(trunk)
    assert engine is not None
    with torch.inference_mode():
        assert engine.runs(x)
        ref = trunk(x)
        ours = engine(x)
    assert len(ours) == len(ref) == 4
    for stage, (a, b) in enumerate(zip(ours, ref)):
        assert a.dtype == torch.float32
        diff = max_rel_diff(a, b)
        assert diff <= REL_TOL, f"{size} {height}x{width} stage {stage}: {diff:.3g}"


@pytest.fixture(scope="module")
def sam2_tiny():
    torch.manual_seed(0)
    model = build_sam2("tiny")
    oracle.perturb_(model.image_encoder, seed=11)
    oracle.perturb_(model.mask_decoder, seed=12)
    return model.eval()


def count_blocks(engine: FastHiera) -> list[int]:
    """Make the engine count the blocks it computes (an instance attribute over the static method)."""
    calls = []

    def block(blk, x, dtype):
        calls.append(dtype)
        return FastHiera.block(engine, blk, x, dtype)

    engine.block = block
    return calls


def test_embed_runs_the_engine_and_matches_the_reference(sam2_tiny):
    pixels = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(3))
    engine = sam2_tiny.trunk_engine()
    calls = count_blocks(engine)
    with torch.inference_mode():
        fast = sam2_tiny.embed(pixels)
        assert len(calls) == len(sam2_tiny.image_encoder.trunk.blocks)
        ref = sam2_tiny.embed(pixels, reference=True)
    assert calls == [torch.float32] * len(sam2_tiny.image_encoder.trunk.blocks)  # the reference did not use it
    assert max_rel_diff(fast.features, ref.features) <= REL_TOL
    for a, b in zip(fast.high_res_features, ref.high_res_features):
        assert max_rel_diff(a, b) <= REL_TOL
    del engine.block


def test_engine_steps_aside_for_autograd_and_other_precisions(sam2_tiny):
    engine = sam2_tiny.trunk_engine()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert engine.precision(x) == torch.float32
        assert not engine.runs(x.double())
    assert not engine.runs(x)  # autograd records: training gets the plain trunk
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert engine.precision(x) == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        assert not engine.runs(x)
    # a trunk that is not the plain Hiera (a subclass, a stand-in) gets no engine
    assert FastHiera.for_trunk(torch.nn.Identity()) is None
    subclass = type("MyHiera", (Hiera,), {})(HIERA_CONFIGS["tiny"])
    assert FastHiera.for_trunk(subclass) is None


def rel_l2(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref).norm() / ref.norm())


def test_bfloat16_is_closer_to_float32_than_autocast():
    """Under a bfloat16 autocast the engine keeps the residual stream in float32: every stage is
    float32 and at most as far from the float32 trunk as the plain trunk under autocast (measured:
    about half as far from stage 2 on), and far closer than bfloat16 noise would allow."""
    trunk = perturbed_trunk("tiny", seed=5)
    engine = FastHiera.for_trunk(trunk)
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        exact = trunk(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = trunk(x)
            ours = engine(x)
    for stage, (o, p, e) in enumerate(zip(ours, plain, exact)):
        assert o.dtype == torch.float32
        assert rel_l2(o, e) <= 1.05 * rel_l2(p, e), stage
        assert rel_l2(o, e) < 0.02, stage
    assert rel_l2(ours[-1], exact[-1]) < 0.8 * rel_l2(plain[-1], exact[-1])


def test_bfloat16_weights_are_kept_until_they_change():
    trunk = perturbed_trunk("tiny", seed=8)
    engine = FastHiera.for_trunk(trunk)
    layer = trunk.blocks[0].mlp.layers[0]
    with torch.inference_mode():
        weight, bias = engine.weights(layer, torch.bfloat16)
        assert weight.dtype == bias.dtype == torch.bfloat16
        assert engine.weights(layer, torch.bfloat16)[0] is weight
        assert engine.weights(layer, torch.float32)[0] is layer.weight
    with torch.no_grad():
        layer.weight.mul_(2)
    with torch.inference_mode():
        moved, _ = engine.weights(layer, torch.bfloat16)
        assert torch.equal(moved, layer.weight.to(torch.bfloat16))


def test_embed_under_bfloat16_runs_the_engine(sam2_tiny):
    pixels = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(3))
    engine = sam2_tiny.trunk_engine()
    calls = count_blocks(engine)
    try:
        sam2_tiny.compute_dtype = torch.bfloat16
        with torch.inference_mode():
            low = sam2_tiny.embed(pixels)
    finally:
        sam2_tiny.compute_dtype = torch.float32
        del engine.block
    assert calls == [torch.bfloat16] * len(sam2_tiny.image_encoder.trunk.blocks)
    with torch.inference_mode():
        exact = sam2_tiny.embed(pixels, reference=True)
    assert low.features.dtype == torch.float32
    assert rel_l2(low.features, exact.features) < 0.02


def test_engine_follows_a_replaced_trunk(sam2_tiny):
    first = sam2_tiny.trunk_engine()
    assert sam2_tiny.trunk_engine() is first
    original = sam2_tiny.image_encoder.trunk
    try:
        sam2_tiny.image_encoder.trunk = perturbed_trunk("tiny", seed=21)
        assert sam2_tiny.trunk_engine().trunk is sam2_tiny.image_encoder.trunk
    finally:
        sam2_tiny.image_encoder.trunk = original


def test_kept_position_embedding_follows_grid_and_weights():
    trunk = perturbed_trunk("tiny", seed=8)
    engine = FastHiera.for_trunk(trunk)
    with torch.inference_mode():
        first = engine.position_embedding(64, 64)
        assert engine.position_embedding(64, 64) is first  # kept
        other = engine.position_embedding(32, 48)
        assert other.shape == (1, 32, 48, trunk.config.embed_dim)
        assert torch.equal(other, trunk.position_embedding(32, 48))
    with torch.no_grad():
        trunk.pos_embed.add_(0.5)  # an in-place update, as load_state_dict makes
    with torch.inference_mode():
        x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(9))
        moved = engine.position_embedding(64, 64)
        assert torch.equal(moved, trunk.position_embedding(64, 64))
        assert not torch.equal(moved, first)
        for a, b in zip(engine(x), trunk(x)):
            assert max_rel_diff(a, b) <= REL_TOL
