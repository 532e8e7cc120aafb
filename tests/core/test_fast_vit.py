"""The fast ViT encoder (samkit.fast.vit, what Sam.embed_image runs for ViT-B/L/H inference on a
CPU) against the plain encoder (samkit.modeling.backbones.vit, itself proven against the official
segment-anything in test_parity_vit.py, which now runs through the engine), on the same seeded,
perturbed weights.

A small ViT (the real classes, fewer and narrower blocks) at inputs whose windows tile the grid
and whose windows are padded, with global and windowed blocks; the embedding to float32
rounding; bfloat16 at least as close to float32 as the plain encoder under autocast; when the
engine steps aside; the engine following a replaced encoder and changed weights.
"""

from __future__ import annotations

import copy

import pytest
import torch

from samkit.build import build_sam
from samkit.fast.vit import FastViT
from samkit.modeling.backbones.vit import ImageEncoderViT

try:
    from . import oracle
except ImportError:
    import oracle

REL_TOL = 1e-5  # float32 rounding: measured <= 2e-6 of the largest value


def small_vit(img_size: int, window: int, seed: int = 4) -> ImageEncoderViT:
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(
        img_size=img_size, embed_dim=96, depth=4, num_heads=3, window_size=window, global_attn_indexes=(1, 3)
    )
    oracle.perturb_(encoder, seed)
    return encoder.eval()


def max_rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return float((ours.float() - ref).abs().max()) / float(ref.abs().max())


def in_bfloat16(fn, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn(x)


def rel_l2(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref).norm() / ref.norm())


@pytest.mark.parametrize("img_size, window", [(448, 14), (512, 14), (256, 8)])
def test_embedding_matches_the_plain_encoder(img_size, window):
    encoder = small_vit(img_size, window)
    engine = FastViT.for_encoder(encoder)
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert engine.precision(x) == torch.float32
        ours, ref = engine(x), encoder(x)
    assert ours.shape == (2, 256, img_size // 16, img_size // 16)
    assert max_rel_diff(ours, ref) <= REL_TOL


def test_attention_in_slices_matches_the_plain_encoder(monkeypatch):
    """The fast attention's slices: a few heads at a time (global blocks: 2 of the 3 heads, then
    1) and a few query rows at a time (a logits buffer of 64 KB), in float32 and bfloat16."""
    import samkit.fast.vit as fast_vit
    import samkit.modeling.backbones.vit as plain_vit

    encoder = small_vit(448, 14)
    engine = FastViT.for_encoder(encoder)
    x = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref, whole = encoder(x), in_bfloat16(engine, x)
        monkeypatch.setattr(fast_vit, "HEADS_PER_SLICE", 2)
        monkeypatch.setattr(plain_vit, "BIAS_CHUNK_BYTES", 64 * 2**10)
        assert plain_vit.bias_chunks(1, 2, 28, 28, 4)[1] < 28  # several row slices
        assert max_rel_diff(engine(x), ref) <= REL_TOL
        sliced = in_bfloat16(engine, x)
    # bfloat16 in slices is as close to float32 as in whole (the products' blocking may differ)
    assert rel_l2(sliced, ref) <= 1.05 * rel_l2(whole, ref) + 1e-4


def test_bfloat16_is_closer_to_float32_than_autocast():
    encoder = small_vit(512, 14)
    engine = FastViT.for_encoder(encoder)
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        exact = encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert engine.precision(x) == torch.bfloat16
            plain, ours = encoder(x), engine(x)
    assert rel_l2(ours, exact) <= 1.05 * rel_l2(plain, exact)
    assert rel_l2(ours, exact) < 0.02
    assert not torch.equal(ours.float(), exact)  # it did compute in bfloat16


def test_engine_steps_aside():
    encoder = small_vit(256, 8)
    engine = FastViT.for_encoder(encoder)
    x = torch.randn(1, 3, 256, 256)
    assert not engine.runs(x)  # autograd records: training and export get the plain encoder
    with torch.no_grad():
        assert not engine.runs(x.double())
        with torch.autocast("cpu", dtype=torch.float16):
            assert not engine.runs(x)
    tanh = copy.deepcopy(encoder)
    tanh.blocks[0].mlp.act = torch.nn.GELU(approximate="tanh")
    assert FastViT.for_encoder(tanh) is None
    assert FastViT.for_encoder(torch.nn.Identity()) is None


def test_sam_embeds_through_the_engine():
    """A Sam with a ViT encoder (the small one, for time; test_parity_vit.py runs ViT-B through
    the engine against the official): embed_image runs the engine (it counts the blocks),
    matching embed_image(reference=True); new weights reach it; a replaced encoder gets a new
    engine; MobileSAM's TinyViT gets none."""
    torch.manual_seed(0)
    model = build_sam("mobile_sam").eval()
    assert model.encoder_engine() is None
    model.image_encoder = small_vit(1024, 14)
    engine = model.encoder_engine()
    assert isinstance(engine, FastViT) and engine.encoder is model.image_encoder
    calls = []

    def block(blk, x, dtype):
        calls.append(dtype)
        return FastViT.block(engine, blk, x, dtype)

    engine.block = block
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))
    fast = model.embed_image(x)
    assert calls == [torch.float32] * len(model.image_encoder.blocks)
    ref = model.embed_image(x, reference=True)
    assert len(calls) == len(model.image_encoder.blocks)
    assert max_rel_diff(fast, ref) <= REL_TOL
    with torch.no_grad():
        model.image_encoder.blocks[-1].mlp.lin2.bias.add_(1.0)
    moved = model.embed_image(x)
    assert max_rel_diff(moved, model.embed_image(x, reference=True)) <= REL_TOL
    assert not torch.allclose(moved, fast)
    model.compute_dtype = torch.bfloat16
    model.embed_image(x)
    assert calls[-1] == torch.bfloat16
    model.image_encoder = small_vit(1024, 14, seed=5)
    assert model.encoder_engine().encoder is model.image_encoder
