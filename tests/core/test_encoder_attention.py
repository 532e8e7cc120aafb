"""ViT attention with decomposed relative positions: samkit's, computed in slices of queries on a
CPU, against the official module on the same weights, for every slicing the budget can pick."""

from __future__ import annotations

import pytest
import torch

from samkit.modeling.backbones import vit as image_encoder
from samkit.modeling.backbones.vit import Attention

try:
    from . import oracle
except ImportError:
    import oracle


@pytest.mark.parametrize("budget", [1, 300_000, 16 * 2**20, 2**40])
@pytest.mark.parametrize("shape", [(1, 20, 20), (3, 14, 14), (2, 9, 13)])
def test_attention_matches_official_for_any_slicing(monkeypatch, budget, shape):
    oracle.official()
    from segment_anything.modeling.image_encoder import Attention as OfficialAttention

    batch, height, width = shape
    torch.manual_seed(sum(shape))
    official = OfficialAttention(96, num_heads=4, qkv_bias=True, use_rel_pos=True, input_size=(height, width))
    oracle.perturb_(official, seed=5)
    ours = Attention(96, num_heads=4, input_size=(height, width))
    ours.load_state_dict(official.state_dict())
    monkeypatch.setattr(image_encoder, "BIAS_CHUNK_BYTES", budget)
    x = torch.randn(batch, height, width, 96)
    with torch.inference_mode():
        expected = official(x)
        got = ours(x)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-5)


def test_bias_chunks_cover_rows_and_batches():
    # a global ViT-B block: one image row of bias is 12.6 MB, so one row per call
    assert image_encoder.bias_chunks(1, 12, 64, 64, 4) == (1, 1)
    # 14x14 windows: 1.8 MB per window, nine windows per call
    assert image_encoder.bias_chunks(25, 12, 14, 14, 4) == (9, 14)
    # a budget below one row still makes progress
    assert image_encoder.bias_chunks(2, 12, 64, 64, 4)[1] >= 1


@pytest.mark.parametrize("budget", [1, 2**40])
def test_bfloat16_attention_stays_close_to_float32(monkeypatch, budget):
    """The CPU bf16 path (plain products instead of the fused kernel) against the official
    module in float32: bf16 rounding only."""
    oracle.official()
    from segment_anything.modeling.image_encoder import Attention as OfficialAttention

    torch.manual_seed(3)
    official = OfficialAttention(96, num_heads=4, qkv_bias=True, use_rel_pos=True, input_size=(16, 16))
    oracle.perturb_(official, seed=6)
    ours = Attention(96, num_heads=4, input_size=(16, 16))
    ours.load_state_dict(official.state_dict())
    monkeypatch.setattr(image_encoder, "BIAS_CHUNK_BYTES", budget)
    x = torch.randn(2, 16, 16, 96)
    with torch.inference_mode():
        expected = official(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = ours(x)
    assert got.dtype == torch.bfloat16
    error = (got.float() - expected).abs().max() / expected.abs().max()
    assert error < 3e-2
