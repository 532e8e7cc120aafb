"""The decoder's reduced-precision mode (`Predictor(decoder_dtype="bfloat16")`, what the Label
Studio backend's clicks use on a CPU with bfloat16 dot products): its image-sized work runs in
bfloat16 (samkit.fast.mask_decoder.image_side_dtype). Its masks must match float32's at IoU >=
0.98 (issue 19's bar), for SAM 1 (MobileSAM, through the Predictor on a real photo) and SAM 2.1
(the decoder on seeded, perturbed weights with unit-like logits); float32 must stay exactly as it
was, whichever mode ran before on the same image; autograd and autocast keep their own precision.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import samkit
from samkit.build import cpu_has_bfloat16_dot_products, resolve_decoder_dtype
from samkit.fast.mask_decoder import image_side_dtype

try:
    from . import oracle
    from .test_sam2_fast_decoder import make_state
    from .test_sam2_fast_decoder import model as sam2_decoder_model  # noqa: F401 (a fixture)
except ImportError:
    import oracle
    from test_sam2_fast_decoder import make_state
    from test_sam2_fast_decoder import model as sam2_decoder_model  # noqa: F401

MIN_MASK_IOU = 0.98  # issue 19's bar for a reduced-precision decoder


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def predictors(mobile_sam, images_dir):
    """A float32 and a bfloat16 Predictor on one MobileSAM (its own copy: the engine keeps one
    image's work per mode) and the dog photo."""
    model = copy.deepcopy(mobile_sam)
    cache = samkit.EmbeddingCache(2)
    exact = samkit.Predictor(model, cache=cache)
    reduced = samkit.Predictor(model, cache=cache, decoder_dtype="bfloat16")
    for predictor in (exact, reduced):
        predictor.set_image(images_dir / "dog.jpg")
    return exact, reduced


CLICKS = [  # on the 800 x 534 photo
    dict(point_coords=np.array([[400.0, 270.0]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[180.0, 130.0], [600.0, 400.0]]), point_labels=np.array([1, 0])),
    dict(box=np.array([220.0, 90.0, 620.0, 450.0])),
    dict(point_coords=np.array([[90.0, 450.0]]), point_labels=np.array([1]), box=np.array([20, 310, 310, 530])),
]


@pytest.mark.parametrize("click", range(len(CLICKS)))
@pytest.mark.parametrize("multimask", [True, False])
def test_sam1_bfloat16_masks_match_float32(predictors, click, multimask):
    """Predictor.predict in both modes: every mask at image size at IoU >= 0.98, the IoU
    predictions within 0.02; and the bfloat16 mode did run in bfloat16 (its logits differ)."""
    exact, reduced = predictors
    masks32, scores32, low32 = exact.predict(**CLICKS[click], multimask_output=multimask)
    masks16, scores16, low16 = reduced.predict(**CLICKS[click], multimask_output=multimask)
    ious = [mask_iou(a, b) for a, b in zip(masks32, masks16)]
    assert min(ious) >= MIN_MASK_IOU, ious
    assert np.abs(scores32 - scores16).max() < 0.02
    assert not np.array_equal(low32, low16)  # not float32 under another name
    # bfloat16 has 8 significant bits: the logits agree to a few percent of their range
    assert np.abs(low32 - low16).max() < 0.05 * np.abs(low32).max()


def test_sam1_best_click_as_the_label_studio_backend_makes_it(predictors):
    """segment_objects (the backend's click: best mask, image size) in both modes."""
    exact, reduced = predictors
    prompt = samkit.Prompt(points=np.array([[310.0, 220.0]]), labels=np.array([1]))
    a = samkit.segment_objects(exact, [prompt], stability=False)[0]
    b = samkit.segment_objects(reduced, [prompt], stability=False)[0]
    assert a.mask.shape == b.mask.shape and a.mask.any()
    assert mask_iou(a.mask, b.mask) >= MIN_MASK_IOU


def test_float32_stays_exact_after_the_reduced_mode(mobile_sam, images_dir):
    """The engine keeps one image's work per mode: float32 after bfloat16 on the same image gives
    bit for bit what float32 gave before."""
    model = copy.deepcopy(mobile_sam)
    cache = samkit.EmbeddingCache(2)
    exact = samkit.Predictor(model, cache=cache)
    reduced = samkit.Predictor(model, cache=cache, decoder_dtype=torch.bfloat16)
    exact.set_image(images_dir / "dog.jpg")
    before = exact.predict(**CLICKS[1])
    reduced.set_image(images_dir / "dog.jpg")
    reduced.predict(**CLICKS[1])
    after = exact.predict(**CLICKS[1])
    for x, y in zip(before, after):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("kind,batch,multimask,best_only", [
    ("points", 1, True, True),
    ("points", 1, False, False),  # the dynamic single mask
    ("box", 3, True, False),
    ("points_box", 9, False, False),  # two chunks of prompts
])
def test_sam2_bfloat16_masks_match_float32(sam2_decoder_model, test_device, kind, batch, multimask, best_only):
    """Sam2.decode in both modes on the same state (high-res features included): masks (logits
    above 0) at IoU >= 0.98, IoU predictions within 0.02."""
    state = make_state(78, test_device)
    prompts = [None if t is None else t.to(test_device) for t in oracle.random_prompts(kind, batch, seed=900)]
    with torch.inference_mode():
        low32, iou32 = sam2_decoder_model.decode(state, *prompts, multimask, best_only)
        low16, iou16 = sam2_decoder_model.decode(state, *prompts, multimask, best_only,
                                                 decoder_dtype=torch.bfloat16)
    assert low16.dtype == torch.float32 and low16.shape == low32.shape
    assert not torch.equal(low32, low16)
    for a, b in zip((low32 > 0).flatten(0, 1).cpu().numpy(), (low16 > 0).flatten(0, 1).cpu().numpy()):
        assert mask_iou(a, b) >= MIN_MASK_IOU
    assert float((iou32 - iou16).abs().max()) < 0.02


def test_sam2_float32_after_bfloat16_is_exact(sam2_decoder_model, test_device):
    state = make_state(79, test_device)
    prompts = [None if t is None else t.to(test_device) for t in oracle.random_prompts("points", 2, seed=901)]
    with torch.inference_mode():
        before = sam2_decoder_model.decode(state, *prompts)
        sam2_decoder_model.decode(state, *prompts, decoder_dtype=torch.bfloat16)
        after = sam2_decoder_model.decode(state, *prompts)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_autograd_and_autocast_keep_their_precision():
    """The mode applies to float32 inference only: while autograd records (fine-tuning) or under
    an autocast the decoder keeps the plain computation's precision."""
    embedding = torch.zeros(1, 4)
    with torch.inference_mode():
        assert image_side_dtype(embedding, torch.bfloat16) == torch.bfloat16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert image_side_dtype(embedding, torch.bfloat16) == torch.float32
    with torch.enable_grad():
        assert image_side_dtype(embedding, torch.bfloat16) == torch.float32
    assert image_side_dtype(embedding.double(), torch.bfloat16) == torch.float64


def test_decoder_dtype_setting():
    """auto is bfloat16 exactly on a CPU with bfloat16 dot products; float16 on a CPU and unknown
    names are one clear error."""
    cpu = torch.device("cpu")
    expected = torch.bfloat16 if cpu_has_bfloat16_dot_products() else torch.float32
    assert resolve_decoder_dtype("auto", cpu) == expected
    assert resolve_decoder_dtype("AUTO", torch.device("cuda")) == torch.float32
    assert resolve_decoder_dtype(None, cpu) == torch.float32
    assert resolve_decoder_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(samkit.SamkitError, match="needs a GPU"):
        resolve_decoder_dtype("float16", cpu)
    with pytest.raises(samkit.SamkitError, match="decoder_dtype"):
        resolve_decoder_dtype("int8", cpu)
