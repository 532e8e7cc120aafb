"""SAM 2's prompt encoder and mask decoder against the official modules, module to module.

The official modules come from an official SAM 2.1 tiny model with perturbed weights
(``sam2_oracle``); ours load their state_dicts strictly.

- Prompt encoder: points with every label (-1 padding, 0, 1, 2 and 3 = box corners as SAM 2 passes
  them), boxes, masks and no prompt give the same sparse and dense embeddings and dense PE.
- Decoder forward: one and many prompts, image side shared or per prompt, mask inputs (dense per
  prompt), single and multi-mask: low-res logits, IoU predictions and object scores to float32
  rounding.
- Dynamic multimask via stability: the selection on crafted logits (some single masks stable,
  some not) and, with a threshold that splits real outputs, inside the decoder; the official
  defaults (delta 0.05, threshold 0.98) are ours.
- Gradients in training mode: the same loss (focal + dice on the best of three masks, L1 on the
  IoU predictions, BCE on the object score, and the single-mask path) and the same gradient for
  every parameter and for the image-side inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from samkit.modeling.sam2.mask_decoder import Sam2MaskDecoder, stability_scores
from samkit.modeling.sam2.model import default_transformer
from samkit.modeling.transformer import TwoWayTransformer
from samkit.modeling.sam2.prompt_encoder import Sam2PromptEncoder

try:
    from . import sam2_oracle
    from .test_sam2_parity import assert_close
except ImportError:
    import sam2_oracle
    from test_sam2_parity import assert_close

IOU_TOL = 1e-5
GRAD_REL_TOL = 1e-4  # per parameter: max |diff| relative to the largest official gradient entry ...
# ... plus this fraction of the largest gradient entry of the whole decoder: the key biases of the
# attentions get gradients that are zero up to rounding (softmax ignores a shift of all logits)
GRAD_FLOOR = 1e-6


@pytest.fixture(scope="module")
def official():
    model, _ = sam2_oracle.official_model("tiny")
    return model


@pytest.fixture(scope="module")
def prompt_encoders(official):
    ours = Sam2PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024))
    ours.load_state_dict(official.sam_prompt_encoder.state_dict(), strict=True)
    return ours.eval(), official.sam_prompt_encoder


@pytest.fixture(scope="module")
def decoders(official):
    ours = Sam2MaskDecoder(default_transformer())
    ours.load_state_dict(official.sam_mask_decoder.state_dict(), strict=True)
    return ours.eval(), official.sam_mask_decoder


def _image_side(seed: int, batch: int = 1):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 256, 64, 64, generator=gen)
    feat_s0 = torch.randn(batch, 32, 256, 256, generator=gen)
    feat_s1 = torch.randn(batch, 64, 128, 128, generator=gen)
    return image, (feat_s0, feat_s1)


def _prompts(encoder, num_prompts: int, seed: int, mask: bool = False):
    """Sparse and dense embeddings of ``num_prompts`` prompts (a box + a point each) from ``encoder``."""
    gen = torch.Generator().manual_seed(seed)
    corners = torch.sort(torch.rand(num_prompts, 2, 2, generator=gen) * 1024, dim=1).values
    point = torch.rand(num_prompts, 1, 2, generator=gen) * 1024
    coords = torch.cat([corners, point], dim=1)
    labels = torch.tensor([[2, 3, 1]], dtype=torch.int32).expand(num_prompts, -1)
    masks = torch.randn(num_prompts, 1, 256, 256, generator=gen) * 4 if mask else None
    with torch.no_grad():
        return encoder(points=(coords, labels), boxes=None, masks=masks)


# ---------------------------------------------------------------------------------------------
# prompt encoder
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["every label, padded", "points and boxes", "boxes only", "mask only", "nothing"]
)
def test_prompt_encoder_matches_official(prompt_encoders, kind):
    ours, official = prompt_encoders
    gen = torch.Generator().manual_seed(7)
    coords = torch.rand(3, 5, 2, generator=gen) * 1024
    labels = torch.tensor([[1, 0, -1, 2, 3], [2, 3, 1, 1, 0], [0, 0, 1, 3, 2]], dtype=torch.int32)
    boxes = torch.sort(torch.rand(3, 2, 2, generator=gen) * 1024, dim=1).values.reshape(3, 4)
    masks = torch.randn(3, 1, 256, 256, generator=gen)
    args = {
        "every label, padded": dict(points=(coords, labels), boxes=None, masks=None),
        "points and boxes": dict(points=(coords, labels), boxes=boxes, masks=masks),
        "boxes only": dict(points=None, boxes=boxes, masks=None),
        "mask only": dict(points=None, boxes=None, masks=masks),
        "nothing": dict(points=None, boxes=None, masks=None),
    }[kind]
    with torch.no_grad():
        sparse, dense = ours(**args)
        ref_sparse, ref_dense = official(**args)
        assert sparse.shape == ref_sparse.shape
        if ref_sparse.numel():
            assert_close(sparse, ref_sparse, rel=1e-6, what="sparse")
        assert_close(dense, ref_dense, rel=1e-6, what="dense")
        assert_close(ours.get_dense_pe(), official.get_dense_pe(), rel=1e-6, what="dense PE")


# ---------------------------------------------------------------------------------------------
# mask decoder
# ---------------------------------------------------------------------------------------------


def _run_both(decoders, image, high_res, sparse, dense, multimask):
    ours, official = decoders
    with torch.no_grad():
        mine = ours(image, official_pe(), sparse, dense, high_res, multimask)
        masks, iou, _, scores = official(
            image_embeddings=image,
            image_pe=official_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=image.shape[0] != sparse.shape[0],
            high_res_features=list(high_res),
        )
    return mine, (masks, iou, scores)


def official_pe():
    model, _ = sam2_oracle.official_model("tiny")
    with torch.no_grad():
        return model.sam_prompt_encoder.get_dense_pe()


def _assert_same(mine, theirs, what):
    masks, iou, scores = theirs
    assert_close(mine.masks, masks, what=f"{what} masks")
    assert mine.iou_predictions.shape == iou.shape
    assert float((mine.iou_predictions - iou).abs().max()) <= IOU_TOL
    assert_close(mine.object_score_logits, scores, what=f"{what} object scores")


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize(
    "num_prompts,per_prompt_image,mask_input",
    [(1, False, False), (3, False, False), (2, True, False), (2, False, True)],
)
def test_decoder_matches_official(decoders, prompt_encoders, num_prompts, per_prompt_image, mask_input, multimask):
    image, high_res = _image_side(seed=num_prompts, batch=num_prompts if per_prompt_image else 1)
    sparse, dense = _prompts(prompt_encoders[1], num_prompts, seed=10 + num_prompts, mask=mask_input)
    mine, theirs = _run_both(decoders, image, high_res, sparse, dense, multimask)
    assert mine.masks.shape == (num_prompts, 3 if multimask else 1, 256, 256)
    _assert_same(mine, theirs, f"{num_prompts} prompts")


def test_decoder_uses_the_shared_plain_transformer(decoders):
    """SAM 2's two-way transformer is SAM 1's plain module (one implementation), its MLPs under
    SAM 2's key names."""
    ours, official = decoders
    assert type(ours.transformer) is TwoWayTransformer
    assert {k for k in ours.state_dict() if ".mlp." in k} == {k for k in official.state_dict() if ".mlp." in k}


def test_dynamic_multimask_defaults_are_official(decoders):
    ours, official = decoders
    assert official.dynamic_multimask_via_stability and ours.dynamic_multimask_via_stability
    assert ours.dynamic_multimask_stability_delta == official.dynamic_multimask_stability_delta == 0.05
    assert ours.dynamic_multimask_stability_thresh == official.dynamic_multimask_stability_thresh == 0.98


def test_dynamic_selection_on_crafted_logits(decoders):
    """Single masks with a sharp edge are stable and kept; ones with a shallow slope are replaced by
    the multimask output of highest predicted IoU; an empty mask counts as stable."""
    ours, official = decoders
    gen = torch.Generator().manual_seed(5)
    ramp = torch.linspace(-1.0, 1.0, 256).view(1, 256).expand(256, 256)
    slopes = torch.tensor([50.0, 0.2, 10.0, 0.05, 1.0, 0.0])
    masks = torch.randn(6, 4, 256, 256, generator=gen)
    masks[:, 0] = ramp * slopes.view(-1, 1, 1)
    masks[5, 0] = -1.0  # empty single mask: stability 1 by definition
    iou = torch.rand(6, 4, generator=gen)
    stable = stability_scores(masks[:, 0], 0.05) >= 0.98
    assert stable.any() and not stable.all()  # both branches taken
    got_masks, got_iou = ours.select_stable_single_mask(masks, iou)
    ref_masks, ref_iou = official._dynamic_multimask_via_stability(masks, iou)
    assert torch.equal(got_masks, ref_masks) and torch.equal(got_iou, ref_iou)


def test_dynamic_selection_inside_decoder(decoders, prompt_encoders):
    """With the threshold set (on both) to the median stability of real outputs, half of the
    prompts take each branch, and the outputs agree."""
    ours, official = decoders
    image, high_res = _image_side(seed=21)
    sparse, dense = _prompts(prompt_encoders[1], 8, seed=22)
    with torch.no_grad():
        all_masks, _, _ = ours.predict_masks(image, official_pe(), sparse, dense, high_res)
    scores = stability_scores(all_masks[:, 0], 0.05)
    median = float(scores.median())
    saved = (ours.dynamic_multimask_stability_thresh, official.dynamic_multimask_stability_thresh)
    try:
        ours.dynamic_multimask_stability_thresh = official.dynamic_multimask_stability_thresh = median
        stable = scores >= median
        assert stable.any() and not stable.all()
        mine, theirs = _run_both(decoders, image, high_res, sparse, dense, multimask=False)
    finally:
        ours.dynamic_multimask_stability_thresh, official.dynamic_multimask_stability_thresh = saved
    _assert_same(mine, theirs, "dynamic")
    # the unstable prompts really got a multimask output, not the single-mask token's
    unstable = torch.nonzero(~stable).flatten()
    assert not torch.equal(mine.masks[unstable, 0], all_masks[unstable, 0])


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------


def _loss(masks, iou, scores, target, iou_target, present):
    """A SAM 2 style training loss: 20 focal + 1 dice on the best mask, L1 on IoU, BCE on the object score."""
    prob = masks.sigmoid()
    t = target.expand_as(masks)
    ce = F.binary_cross_entropy_with_logits(masks, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    focal = (ce * (1 - p_t) ** 2 * (0.25 * t + 0.75 * (1 - t))).flatten(2).mean(-1)
    dice = 1 - (2 * (prob * t).flatten(2).sum(-1) + 1) / (prob.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    per_mask = 20 * focal + dice
    best = per_mask.argmin(dim=1, keepdim=True)
    return (
        per_mask.gather(1, best).mean()
        + (iou - iou_target).abs().mean()
        + F.binary_cross_entropy_with_logits(scores, present)
    )


@pytest.mark.parametrize("multimask", [True, False])
def test_gradients_match_official(decoders, prompt_encoders, multimask):
    ours, official = decoders
    gen = torch.Generator().manual_seed(31)
    sparse, dense = _prompts(prompt_encoders[1], 3, seed=32, mask=True)
    image, high_res = _image_side(seed=33)
    target = (torch.rand(3, 1, 256, 256, generator=gen) > 0.6).float()
    iou_target = torch.rand(3, 3 if multimask else 1, generator=gen)
    present = torch.tensor([[1.0], [0.0], [1.0]])
    grads = []
    for which, decoder in (("ours", ours), ("official", official)):
        decoder.train()
        decoder.zero_grad(set_to_none=True)
        inputs = [t.clone().requires_grad_(True) for t in (image, *high_res, sparse, dense)]
        img, s0, s1, sp, de = inputs
        try:
            if which == "ours":
                masks, iou, scores = decoder(img, official_pe(), sp, de, (s0, s1), multimask)
            else:
                masks, iou, _, scores = decoder(
                    image_embeddings=img, image_pe=official_pe(), sparse_prompt_embeddings=sp,
                    dense_prompt_embeddings=de, multimask_output=multimask, repeat_image=True,
                    high_res_features=[s0, s1],
                )
            loss = _loss(masks, iou, scores, target, iou_target, present)
            loss.backward()
        finally:
            decoder.eval()
        grads.append((loss.detach(), {n: p.grad for n, p in decoder.named_parameters()}, [t.grad for t in inputs]))
        decoder.zero_grad(set_to_none=True)  # the gradients are kept above; the modules are shared
    (loss, ours_grads, ours_in), (ref_loss, ref_grads, ref_in) = grads
    assert abs(float(loss - ref_loss)) <= 1e-6 * abs(float(ref_loss))
    assert ours_grads.keys() == ref_grads.keys()
    floor = GRAD_FLOOR * max(float(g.abs().max()) for g in ref_grads.values() if g is not None)
    with_grad = 0
    for name, ref in ref_grads.items():
        got = ours_grads[name]
        assert (got is None) == (ref is None), name  # e.g. the single-mask token's MLP in multimask mode
        if ref is not None:
            with_grad += 1
            diff = float((got - ref).abs().max())
            assert diff <= GRAD_REL_TOL * float(ref.abs().max()) + floor, f"grad of {name}: max |diff| {diff:.3g}"
    assert with_grad >= len(ref_grads) - 8  # at most one hypernetwork MLP (6 tensors) and a token unused
    for i, (got, ref) in enumerate(zip(ours_in, ref_in)):
        assert_close(got, ref, rel=GRAD_REL_TOL, what=f"grad of input {i}")
