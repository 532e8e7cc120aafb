"""Mask decoder parity: samkit's fast decoder (samkit.fast.mask_decoder.FastMaskDecoder, an engine
over the plain samkit.modeling.mask_decoder.MaskDecoder's weights) against the official decoder
and against the plain reference, module to module.

The fast decoder computes attention by folding the key/query projections into the handful of
prompt tokens and shares the image-only work between prompts and calls. These tests feed it and
the official decoder (or the plain one) the same perturbed weights and random inputs in every
shape the predictor and the generator use: one prompt, many prompts across chunk boundaries, one
dense embedding shared by all prompts or one per prompt (mask inputs), single and multi-mask
output, best mask only, a region of the grid, and repeated calls on one image and then on
another (the image-side cache must follow the image), and on weights changed in place (it must
follow the weights: fine-tuning swaps tuned weights into a live model).
"""

from __future__ import annotations

import pytest
import torch

from samkit.fast import mask_decoder as our_mask_decoder
from samkit.fast.mask_decoder import FastMaskDecoder
from samkit.image_state import ImageState
from samkit.modeling.mask_decoder import MaskDecoder
from samkit.modeling.sam import select_masks

try:
    from . import oracle
except ImportError:
    import oracle

LOGIT_TOL = 5e-5  # max |diff| of low-res logits relative to their largest value
IOU_TOL = 1e-5
# The fast decoder against the plain reference, on the same weights: float32 rounding of two
# orders of computation. Measured on these cases (2-thread CPU): logits up to 9.0e-7 of their
# largest value, IoU predictions up to 1.5e-7; the tolerances leave a margin of >= 10x.
REF_LOGIT_TOL = 1e-5
REF_IOU_TOL = 2e-6


@pytest.fixture(scope="module")
def decoders():
    sa = oracle.official()
    from segment_anything.modeling import MaskDecoder as OfficialMaskDecoder
    from segment_anything.modeling import TwoWayTransformer as OfficialTransformer

    torch.manual_seed(0)
    official = OfficialMaskDecoder(
        num_multimask_outputs=3,
        transformer=OfficialTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    oracle.perturb_(official, seed=11)
    plain = MaskDecoder()
    plain.load_state_dict(official.state_dict())
    assert sa is not None
    return FastMaskDecoder(plain.eval()), official.eval()


def _inputs(num_prompts: int, num_tokens: int, per_prompt_dense: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 256, 64, 64, generator=gen)
    pe = torch.randn(1, 256, 64, 64, generator=gen)
    sparse = torch.randn(num_prompts, num_tokens, 256, generator=gen)
    if per_prompt_dense:
        dense = torch.randn(num_prompts, 256, 64, 64, generator=gen) * 0.5
    else:
        dense = (torch.randn(1, 256, 1, 1, generator=gen) * 0.5).expand(num_prompts, -1, 64, 64)
    return image, pe, sparse, dense


def _run(decoder, image, pe, sparse, dense, multimask):
    with torch.inference_mode():
        return decoder(
            image_embeddings=image,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )


def _assert_same(ours_out, official_out):
    (masks, iou), (ref_masks, ref_iou) = ours_out, official_out
    assert masks.shape == ref_masks.shape and iou.shape == ref_iou.shape
    scale = float(ref_masks.abs().max())
    assert float((masks - ref_masks).abs().max()) <= LOGIT_TOL * scale
    assert float((iou - ref_iou).abs().max()) <= IOU_TOL
    # the sign of the logits is the mask: all but a vanishing fraction of pixels must agree
    assert float(((masks > 0) != (ref_masks > 0)).float().mean()) < 1e-5


@pytest.mark.parametrize(
    "num_prompts,num_tokens,per_prompt_dense,multimask",
    [
        (1, 2, False, True),  # one click (point + padding point)
        (1, 3, False, False),  # box + point, single mask
        (37, 2, False, True),  # a point batch that does not fill whole chunks
        (5, 1, True, False),  # mask inputs: one dense embedding per prompt
        (3, 4, True, True),
    ],
)
def test_decoder_matches_official(decoders, num_prompts, num_tokens, per_prompt_dense, multimask):
    ours, official = decoders
    inputs = _inputs(num_prompts, num_tokens, per_prompt_dense, seed=num_prompts * 10 + num_tokens)
    _assert_same(_run(ours, *inputs, multimask), _run(official, *inputs, multimask))


def test_decoder_chunking_does_not_change_results(decoders, monkeypatch):
    ours, _ = decoders
    inputs = _inputs(9, 2, False, seed=3)
    reference = _run(ours, *inputs, True)
    for chunk in (1, 4, 64):
        monkeypatch.setattr(our_mask_decoder, "DECODER_CHUNK", {"cpu": chunk, "other": chunk})
        masks, iou = _run(ours, *inputs, True)
        assert torch.allclose(masks, reference[0], atol=1e-5, rtol=0)
        assert torch.allclose(iou, reference[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("multimask", [True, False])
def test_best_only_is_the_best_of_the_masks(decoders, multimask):
    """best_only decodes, per prompt, only the mask with the highest IoU prediction: the same as
    picking it from the full output, also when prompts of one batch pick different masks."""
    ours, _ = decoders
    inputs = _inputs(24, 2, False, seed=5)
    masks, iou = _run(ours, *inputs, multimask)
    with torch.inference_mode():
        best_masks, best_iou = ours(*inputs, multimask_output=multimask, best_only=True)
    best = iou.argmax(dim=1)
    if multimask:
        assert len(best.unique()) > 1  # the batch exercises more than one mask token
    assert best_masks.shape == (24, 1, 256, 256) and best_iou.shape == (24, 1)
    assert torch.equal(best_iou[:, 0], iou[torch.arange(24), best])
    assert torch.allclose(best_masks[:, 0], masks[torch.arange(24), best], atol=1e-5, rtol=0)
    # one prompt alone (a click) runs only its best token's hypernetwork: one prompt per token
    image, pe, sparse, dense = inputs
    for token in best.unique().tolist():
        k = int((best == token).nonzero()[0])
        with torch.inference_mode():
            one_mask, one_iou = ours(
                image, pe, sparse[k : k + 1], dense[k : k + 1], multimask_output=multimask, best_only=True
            )
        assert one_mask.shape == (1, 1, 256, 256) and torch.allclose(one_iou[0, 0], iou[k, token], atol=1e-6, rtol=0)
        assert torch.allclose(one_mask[0, 0], masks[k, token], atol=1e-5, rtol=0)


def test_image_side_cache_follows_the_image(decoders):
    """Decode on image A, on image B, then A again, with new tensors each time: every call must
    match the official decoder (a stale cache would reuse A's work for B)."""
    ours, official = decoders
    first = _inputs(4, 2, False, seed=100)
    second = _inputs(4, 2, False, seed=200)
    for image, pe, sparse, dense in (first, second, first, second):
        inputs = (image.clone(), pe.clone(), sparse, dense.clone())
        _assert_same(_run(ours, *inputs, True), _run(official, *inputs, True))
    # the same image tensor modified in place between calls (the identity alone must not decide)
    image, pe, sparse, dense = first
    image = image.clone()
    _run(ours, image, pe, sparse, dense, True)
    image.mul_(-1.0)
    _assert_same(_run(ours, image, pe, sparse, dense, True), _run(official, image, pe, sparse, dense, True))


def test_image_side_cache_follows_the_weights(decoders):
    """Weights changed in place (load_state_dict, an optimiser step) between two calls on the
    same image tensors must not reuse work computed with the old weights."""
    import copy

    plain, official = copy.deepcopy(decoders[0].decoder), copy.deepcopy(decoders[1])
    ours = FastMaskDecoder(plain)
    inputs = _inputs(3, 2, False, seed=300)
    _assert_same(_run(ours, *inputs, True), _run(official, *inputs, True))
    with torch.no_grad():
        for decoder in (plain, official):
            decoder.transformer.layers[0].norm4.weight.mul_(1.5)
            decoder.transformer.layers[0].cross_attn_token_to_image.v_proj.weight.add_(0.01)
            decoder.transformer.layers[1].cross_attn_token_to_image.k_proj.weight.add_(0.01)
    _assert_same(_run(ours, *inputs, True), _run(official, *inputs, True))
    # each weight alone that the kept work was computed from (the later attentions' factored weights)
    later = (
        lambda d: d.transformer.layers[1].cross_attn_image_to_token.q_proj.bias,
        lambda d: d.transformer.final_attn_token_to_image.v_proj.weight,
        lambda d: d.transformer.layers[1].norm4.bias,
    )
    for weight in later:
        with torch.no_grad():
            for decoder in (plain, official):
                weight(decoder).add_(0.05)
        _assert_same(_run(ours, *inputs, True), _run(official, *inputs, True))


@pytest.mark.parametrize(
    "original_size", [(1200, 1800), (1800, 1200), (1024, 1024), (480, 640), (5, 7), (1, 1000), (3000, 17), (767, 1023)]
)
def test_postprocess_equals_the_official_steps(mobile_sam, original_size):
    """Upscaling only the low-res rows and columns that survive the crop gives bit-identical
    logits to the official upscale-to-1024, crop, resize."""
    import torch.nn.functional as F

    from samkit.utils.transforms import preprocess_shape

    input_size = preprocess_shape(*original_size, 1024)
    low_res = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(sum(original_size)))
    ours = mobile_sam.postprocess_masks(low_res, input_size, original_size)
    official = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)
    official = official[..., : input_size[0], : input_size[1]]
    official = F.interpolate(official, original_size, mode="bilinear", align_corners=False)
    assert torch.equal(ours, official)


def test_decoder_gradients_flow(decoders):
    """The fast paths (in-place softmax, folded projections) must not break training: run with
    autograd recording, the engine's gradients reach the plain module's parameters."""
    ours, official = decoders
    plain = ours.decoder
    image, pe, sparse, dense = _inputs(2, 2, False, seed=7)
    plain.train()
    try:
        masks, iou = ours(image_embeddings=image, image_pe=pe, sparse_prompt_embeddings=sparse,
                          dense_prompt_embeddings=dense, multimask_output=True)
        (masks.mean() + iou.mean()).backward()
        # With multimask output the first mask's hypernetwork is not run (its mask is dropped);
        # the key bias of a token-to-image attention shifts all logits of a softmax row alike,
        # so its gradient is zero in any implementation, and the folded one never uses it.
        unused = ("output_hypernetworks_mlps.0.", "transformer.layers.1.cross_attn_token_to_image.k_proj.bias",
                  "transformer.final_attn_token_to_image.k_proj.bias")
        grads = {n: p.grad for n, p in plain.named_parameters() if not n.startswith(unused)}
        missing = [n for n, g in grads.items() if g is None]
        assert not missing
        assert all(torch.isfinite(g).all() for g in grads.values())
        transformer = [g for n, g in grads.items() if n.startswith("transformer.")]
        assert sum(float(g.abs().sum()) for g in transformer) > 0
    finally:
        plain.zero_grad(set_to_none=True)
        plain.eval()


# ---------------------------------------------------------------------------------------------
# the fast decoder against the plain reference (samkit.modeling), on the same weights
# ---------------------------------------------------------------------------------------------


def _reference(plain, image, pe, sparse, dense, multimask, best_only=False, region=None):
    """The plain decoder's output, with best_only and region picked from it as Sam.decode does."""
    with torch.no_grad():
        masks, iou = plain(image, pe, sparse, dense, multimask)
    return select_masks(masks, iou, best_only, region, image.shape[-2:])


def _fast(engine, image, pe, sparse, dense, multimask, best_only=False, region=None):
    with torch.inference_mode():
        return engine(image, pe, sparse, dense, multimask_output=multimask, best_only=best_only, region=region)


def _assert_same_as_reference(fast_out, reference_out):
    (masks, iou), (ref_masks, ref_iou) = fast_out, reference_out
    assert masks.shape == ref_masks.shape and iou.shape == ref_iou.shape
    assert float((masks - ref_masks).abs().max()) <= REF_LOGIT_TOL * float(ref_masks.abs().max())
    assert float((iou - ref_iou).abs().max()) <= REF_IOU_TOL
    assert float(((masks > 0) != (ref_masks > 0)).float().mean()) < 1e-5


@pytest.mark.parametrize(
    "num_prompts,num_tokens,per_prompt_dense,multimask,best_only,region",
    [  # a CPU decodes 8 prompts per pass (DECODER_CHUNK)
        (1, 2, False, True, False, None),  # a click, three masks
        (1, 2, False, True, True, (40, 64)),  # the Label Studio click: best mask, the image's rows
        (1, 3, False, False, False, None),  # box + point, single mask
        (19, 2, False, True, False, None),  # 2 whole chunks of 8 and a part one
        (12, 2, False, True, True, None),  # best mask per prompt across chunks
        (10, 2, False, False, False, (64, 43)),  # a portrait image's columns
        (9, 1, True, True, False, None),  # mask inputs (a dense embedding per prompt) across chunks
        (5, 4, True, False, True, (10, 64)),
    ],
)
def test_fast_decoder_matches_reference(decoders, num_prompts, num_tokens, per_prompt_dense, multimask, best_only,
                                        region):
    ours, _ = decoders
    inputs = _inputs(num_prompts, num_tokens, per_prompt_dense, seed=1000 + num_prompts)
    fast = _fast(ours, *inputs, multimask, best_only, region)
    _assert_same_as_reference(fast, _reference(ours.decoder, *inputs, multimask, best_only, region))
    # and again from the kept image work
    _assert_same_as_reference(_fast(ours, *inputs, multimask, best_only, region), fast)


def test_fast_decoder_follows_the_reference_weights(decoders):
    """The engine reads the plain module's weights: tuned weights loaded into it in place, an
    optimiser step on it, and a parameter replaced by a new tensor all show in the next fast
    call on the same image tensors (whose image work the engine had kept)."""
    import copy

    plain = copy.deepcopy(decoders[0].decoder)
    ours = FastMaskDecoder(plain)
    inputs = _inputs(3, 2, False, seed=400)
    before = _fast(ours, *inputs, True)
    _assert_same_as_reference(before, _reference(plain, *inputs, True))

    # tuned weights swapped in (load_state_dict copies into the same tensors)
    tuned = oracle.perturb_(copy.deepcopy(plain), seed=401).state_dict()
    plain.load_state_dict(tuned)
    after = _fast(ours, *inputs, True)
    assert float((after[0] - before[0]).abs().max()) > 0.1 * float(before[0].abs().max())
    _assert_same_as_reference(after, _reference(plain, *inputs, True))

    # a training step on the reference (SGD updates the parameters in place)
    plain.train()
    optimizer = torch.optim.SGD(plain.parameters(), lr=1.0)
    masks, iou = plain(*inputs, True)
    (masks.square().mean() + iou.mean()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    plain.eval()
    stepped = _fast(ours, *inputs, True)
    assert not torch.equal(stepped[0], after[0])
    _assert_same_as_reference(stepped, _reference(plain, *inputs, True))

    # a parameter replaced by another tensor
    norm = plain.transformer.layers[1].norm4
    norm.weight = torch.nn.Parameter(norm.weight.detach() * 1.3)
    replaced = _fast(ours, *inputs, True)
    assert not torch.equal(replaced[0], stepped[0])
    _assert_same_as_reference(replaced, _reference(plain, *inputs, True))


@pytest.fixture(scope="module")
def image_state():
    features = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(77))
    return ImageState(features, (1200, 1800), (683, 1024))


@pytest.mark.parametrize(
    "kind,batch,multimask,best_only,region",
    [
        ("points", 1, True, False, None),
        ("points", 1, True, True, (43, 64)),
        ("box", 3, False, False, None),
        ("points_box", 2, True, True, None),
        ("points_mask", 2, False, False, (43, 64)),
        ("points", 10, True, False, None),
    ],
)
def test_sam_decode_fast_matches_reference(mobile_sam, image_state, kind, batch, multimask, best_only, region):
    """Sam.decode (the engine) against Sam.decode(reference=True) (the plain modules), with the
    model's own prompt encoder: points, boxes, mask inputs, best mask, region."""
    prompts = oracle.random_prompts(kind, batch, seed=500 + batch)
    with torch.inference_mode():
        fast = mobile_sam.decode(image_state, *prompts, multimask, best_only, region)
        reference = mobile_sam.decode(image_state, *prompts, multimask, best_only, region, reference=True)
    _assert_same_as_reference(fast, reference)


def test_sam_decodes_in_float32_whatever_the_compute_dtype(mobile_sam, image_state):
    """compute_dtype is the image encoder's precision: SAM 1's decoder with bf16 gives exactly the
    float32 logits (fast engine and plain modules)."""
    import copy

    model = copy.deepcopy(mobile_sam)
    prompts = oracle.random_prompts("points_box", 2, seed=610)
    with torch.inference_mode():
        fp32 = [model.decode(image_state, *prompts, reference=ref) for ref in (False, True)]
        model.compute_dtype = torch.bfloat16
        bf16 = [model.decode(image_state, *prompts, reference=ref) for ref in (False, True)]
    for a, b in zip(fp32, bf16):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_sam_holds_only_the_plain_modules(mobile_sam, image_state):
    """The engine has no weights of its own and is no submodule: the state_dict, the parameters
    and the modules are the plain networks'; the engine reads the model's own modules."""
    import copy

    from samkit.modeling.prompt_encoder import PromptEncoder

    model = copy.deepcopy(mobile_sam)
    engine = model.decoder_engine()
    assert engine.mask_decoder.decoder is model.mask_decoder
    assert engine.dense_pe.prompt_encoder is model.prompt_encoder
    assert isinstance(model.mask_decoder, MaskDecoder) and isinstance(model.prompt_encoder, PromptEncoder)
    assert all(type(m).__module__.startswith(("samkit.modeling", "torch.")) for m in model.modules())
    assert model.state_dict().keys() == mobile_sam.state_dict().keys()
    # tuned weights loaded into the live model reach the fast path
    prompts = oracle.random_prompts("points", 3, seed=600)
    with torch.inference_mode():
        before = model.decode(image_state, *prompts)
    for module, seed in ((model.mask_decoder, 601), (model.prompt_encoder, 602)):  # the latter's PE matrix too
        module.load_state_dict(oracle.perturb_(copy.deepcopy(module), seed=seed).state_dict())
        with torch.inference_mode():
            after = model.decode(image_state, *prompts)
            reference = model.decode(image_state, *prompts, reference=True)
        assert not torch.allclose(after[0], before[0])
        _assert_same_as_reference(after, reference)
        before = after
    # a new mask decoder module gets a new engine
    model.mask_decoder = MaskDecoder().eval()
    assert model.decoder_engine().mask_decoder.decoder is model.mask_decoder
    with torch.inference_mode():
        fast = model.decode(image_state, *prompts)
        _assert_same_as_reference(fast, model.decode(image_state, *prompts, reference=True))
