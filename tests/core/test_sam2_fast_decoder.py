"""SAM 2's fast decoder (samkit.fast.sam2_decoder, what Sam2.decode runs) against the plain
reference (Sam2.decode(reference=True): Sam2PromptEncoder and Sam2MaskDecoder, themselves proven
against the official sam2 in test_sam2_decoder.py / test_sam2_parity.py), on the same seeded,
perturbed weights with unit-like logits.

Points, boxes, mask inputs; one prompt and batches across the CPU's chunks of 8; multimask, the
dynamic single mask (stable and unstable prompts in one batch), best_only, region. Logits to
float32 rounding, IoU predictions to 1e-6, masks identical apart from pixels within rounding of
the threshold. The kept image work follows the image, its high-res features and the weights.
"""

from __future__ import annotations

import copy

import pytest
import torch

from samkit.fast.sam2_decoder import FastSam2MaskDecoder, Sam2DecoderEngine
from samkit.image_state import ImageState
from samkit.modeling.sam2.model import build_sam2

try:
    from . import oracle
except ImportError:
    import oracle

# float32 rounding: measured differences are <= 6e-7 of the largest logit; 10x+ margin
LOGIT_TOL = 1e-5  # relative to the largest |logit|
IOU_TOL = 1e-6
LOGIT_GAIN = 20.0  # as sam2_oracle: unit-like logits, as a trained model's


@pytest.fixture(scope="module")
def model(test_device):
    torch.manual_seed(0)
    sam = build_sam2("tiny")
    # only the decoder side runs here: the Hiera trunk is dropped to save memory and time
    sam.image_encoder = torch.nn.Identity()
    oracle.perturb_(sam.prompt_encoder, seed=31)
    oracle.perturb_(sam.mask_decoder, seed=32)
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(LOGIT_GAIN)
            mlp.layers[-1].bias.mul_(LOGIT_GAIN)
    return sam.eval().to(test_device)


def make_state(seed: int, device: torch.device) -> ImageState:
    gen = torch.Generator().manual_seed(seed)
    high_res = (torch.randn(1, 32, 256, 256, generator=gen), torch.randn(1, 64, 128, 128, generator=gen))
    features = torch.randn(1, 256, 64, 64, generator=gen)
    return ImageState(features.to(device), (700, 900), (1024, 1024), tuple(t.to(device) for t in high_res))


@pytest.fixture(scope="module")
def state(test_device):
    return make_state(77, test_device)


def decode(model, state, inputs, multimask, best_only=False, region=None, reference=False):
    inputs = [None if t is None else t.to(model.device) for t in inputs]
    with torch.inference_mode():
        return model.decode(state, *inputs, multimask, best_only, region, reference=reference)


def assert_same(fast, reference):
    (masks, iou), (ref_masks, ref_iou) = fast, reference
    assert masks.shape == ref_masks.shape and iou.shape == ref_iou.shape
    assert float((masks - ref_masks).abs().max()) <= LOGIT_TOL * float(ref_masks.abs().max())
    assert float((iou - ref_iou).abs().max()) <= IOU_TOL
    flipped = (masks > 0) != (ref_masks > 0)
    # a flipped pixel is one whose logit is within rounding of the threshold
    assert bool((ref_masks[flipped].abs() <= LOGIT_TOL * float(ref_masks.abs().max())).all())


@pytest.mark.parametrize(
    "kind,batch,multimask,best_only,region",
    [
        ("points", 1, True, True, None),  # the Label Studio click: best of three
        ("points", 1, True, False, None),
        ("points", 1, False, False, None),  # dynamic single mask
        ("box", 3, False, False, None),
        ("points_box", 2, True, True, (40, 64)),
        ("points", 19, True, False, None),  # 2 whole chunks of 8 and a part one
        ("points", 12, True, True, None),  # best mask per prompt across chunks
        ("points", 10, False, True, (64, 43)),
        ("points_mask", 9, True, False, None),  # a dense embedding per prompt: no kept image work
        ("box_mask", 3, False, False, (30, 50)),
    ],
)
def test_fast_decode_matches_reference(model, state, kind, batch, multimask, best_only, region):
    inputs = oracle.random_prompts(kind, batch, seed=600 + batch)
    fast = decode(model, state, inputs, multimask, best_only, region)
    assert_same(fast, decode(model, state, inputs, multimask, best_only, region, reference=True))
    # and again from the kept image work
    assert_same(decode(model, state, inputs, multimask, best_only, region), fast)


def test_dynamic_single_mask_both_ways(model, state):
    """With a threshold that splits the batch, some prompts keep the single-mask token's mask and
    some fall back to the best multimask output, each as the reference chooses."""
    decoder = model.mask_decoder
    inputs = oracle.random_prompts("points", 16, seed=700)
    points = model.prompt_points(*(t.to(model.device) for t in inputs[:2]), None)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=None)
        all_masks, _, _ = decoder.predict_masks(
            state.features, model.prompt_encoder.get_dense_pe(), sparse, dense, state.high_res_features
        )
    from samkit.modeling.sam2.mask_decoder import stability_scores

    scores = stability_scores(all_masks[:, 0], decoder.dynamic_multimask_stability_delta)
    threshold = float(scores.median())
    old = decoder.dynamic_multimask_stability_thresh
    decoder.dynamic_multimask_stability_thresh = threshold
    try:
        stable = scores >= threshold
        assert 0 < int(stable.sum()) < len(stable)
        fast = decode(model, state, inputs, False)
        reference = decode(model, state, inputs, False, reference=True)
        assert_same(fast, reference)
        # the unstable prompts got another mask than the single-mask token's
        assert not torch.allclose(fast[0][~stable, 0], all_masks[~stable, 0], atol=1e-3)
        assert torch.allclose(fast[0][stable, 0], all_masks[stable, 0], atol=1e-4)
    finally:
        decoder.dynamic_multimask_stability_thresh = old


def test_kept_work_follows_image_high_res_and_weights(model, state):
    """A new image, new high-res features on the same image, and weights changed in place (the
    kept work's inputs) all show in the next fast call."""
    sam = copy.deepcopy(model)
    inputs = oracle.random_prompts("points", 3, seed=800)
    first = decode(sam, state, inputs, True)
    other = make_state(78, sam.device)
    assert_same(decode(sam, other, inputs, True), decode(sam, other, inputs, True, reference=True))
    gen = torch.Generator().manual_seed(5)
    new_high_res = ImageState(
        state.features, state.original_size, state.input_size,
        tuple(f + torch.randn(f.shape, generator=gen).to(f.device) for f in state.high_res_features),
    )
    changed = decode(sam, new_high_res, inputs, True)
    assert float((changed[0] - first[0]).abs().max()) > 0.1 * float(first[0].abs().max())
    assert_same(changed, decode(sam, new_high_res, inputs, True, reference=True))
    # tuned weights loaded in place (also the second convolution's bias, in the laid-out features)
    tuned = oracle.perturb_(copy.deepcopy(sam.mask_decoder), seed=801).state_dict()
    sam.mask_decoder.load_state_dict(tuned)
    assert_same(decode(sam, state, inputs, True), decode(sam, state, inputs, True, reference=True))
    with torch.no_grad():
        sam.mask_decoder.output_upscaling[3].bias.add_(0.5)
    assert_same(decode(sam, state, inputs, True), decode(sam, state, inputs, True, reference=True))


def test_prepare_decoder_and_engine_reads_the_plain_modules(model, state):
    sam = copy.deepcopy(model)
    engine = sam.decoder_engine()
    assert isinstance(engine, Sam2DecoderEngine) and isinstance(engine.mask_decoder, FastSam2MaskDecoder)
    assert engine.mask_decoder.decoder is sam.mask_decoder and engine.dense_pe.prompt_encoder is sam.prompt_encoder
    assert not any(isinstance(m, FastSam2MaskDecoder) for m in sam.modules())
    assert sam.state_dict().keys() == model.state_dict().keys()
    sam.prepare_decoder(state)
    kept = engine.mask_decoder._kept
    assert kept is not None
    inputs = oracle.random_prompts("points", 1, seed=900)
    assert_same(decode(sam, state, inputs, True, True), decode(sam, state, inputs, True, True, reference=True))
    assert engine.mask_decoder._kept is kept  # the click reused the prepared work


def test_bf16_fast_decode_agrees_with_fp32(model, state):
    """Under a caller's bf16 autocast (fine-tuning's) the engine takes the direct products; its
    masks match fp32's at IoU >= 0.98."""
    sam = copy.deepcopy(model)
    inputs = oracle.random_prompts("points", 8, seed=950)
    fp32 = decode(sam, state, inputs, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = decode(sam, state, inputs, True)
    assert bf16[0].dtype == torch.float32
    assert not torch.equal(bf16[0], fp32[0])  # it did compute in bf16
    a, b = fp32[0] > 0, bf16[0] > 0
    iou = (a & b).flatten(2).sum(-1) / (a | b).flatten(2).sum(-1).clamp(min=1)
    assert float(iou.min()) >= 0.98


def test_reduced_compute_dtype_leaves_the_decoder_in_float32(model, state):
    """compute_dtype is the image encoder's precision: with bf16 the decoder (fast and plain)
    gives exactly the float32 logits."""
    sam = copy.deepcopy(model)
    inputs = oracle.random_prompts("points", 4, seed=960)
    fp32 = [decode(sam, state, inputs, True, reference=ref) for ref in (False, True)]
    sam.compute_dtype = torch.bfloat16
    bf16 = [decode(sam, state, inputs, True, reference=ref) for ref in (False, True)]
    for a, b in zip(fp32, bf16):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
