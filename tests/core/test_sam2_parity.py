"""SAM 2 / 2.1 image networks against the official ``sam2`` package, on the same perturbed weights.

The official models are built from the package's own hydra configs (``build_sam2``), every weight
perturbed and saved in the official ``{"model": state_dict}`` format (``sam2_oracle``); ours load
those keys unchanged.

- Structure, all four sizes: the same blocks (widths, heads, windows, query pooling) and exactly
  the official ``image_encoder.*`` keys and shapes, loaded strictly.
- The image path, tiny and base-plus, against ``SAM2ImagePredictor`` on a real 1800x1200 photo
  (so the square resize changes the aspect ratio): the 64x64 embedding and the two high-res maps
  as the predictor keeps them; then low-res logits, IoU predictions, object scores and the masks
  at image size for points, boxes, a box with a point, a mask input, batched boxes, single and
  multi-mask, through the predictor's family interface (``encode_image``, ``to_input_frame``,
  ``decode``, ``postprocess_masks`` and OpenCV's ``upscale_logits``). Logits to float32 rounding
  (measured <1e-6 of their range), IoU within 1e-5, masks at image size with IoU >= 0.999.
  ``samkit.Predictor`` runs the model as it is and gives the same masks.
- Trunk and neck, tiny and base-plus: every stage output and every FPN level on a 256x256 input
  (where the windows of 14 and 7 of the last two stages need padding), to float32 rounding. Small and large run
  on smaller inputs with perturbed norms and positional embeddings only (perturbing all of
  large's 224 M weights costs more than the check).
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from PIL import Image

import samkit
from samkit.modeling.backbones.hiera import HIERA_CONFIGS, plan_blocks
from samkit.modeling.backbones.sam2_encoder import build_sam2_image_encoder
from samkit.image_state import ImageState
from samkit.modeling.sam2.model import build_sam2

try:
    from . import oracle, sam2_oracle
except ImportError:
    import oracle
    import sam2_oracle

REL_TOL = 1e-5


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


# ---------------------------------------------------------------------------------------------
# the image path against SAM2ImagePredictor
# ---------------------------------------------------------------------------------------------

IOU_TOL = 1e-5
MASK_IOU_MIN = 0.999
# one logit per prompt, through the transformer and a 3-layer MLP (measured 5e-6 of its size)
SCORE_TOL = 1e-4

CASES = {
    "one point, multimask": dict(point_coords=[[500, 375]], point_labels=[1], multimask_output=True),
    "two points, single": dict(point_coords=[[500, 375], [1125, 625]], point_labels=[1, 0], multimask_output=False),
    "box, single": dict(box=[425, 600, 700, 875], multimask_output=False),
    "box and negative point, multimask": dict(
        box=[425, 600, 700, 875], point_coords=[[575, 750]], point_labels=[0], multimask_output=True
    ),
    "batched boxes, single": dict(
        box=[[75, 275, 1725, 850], [425, 600, 700, 875], [1375, 550, 1650, 800]], multimask_output=False
    ),
    "mask input and point, single": dict(point_coords=[[500, 375]], point_labels=[1], multimask_output=False),
}


def sam2_model(size: str):
    """Our SAM 2.1 model of ``size`` with the perturbed official weights, from the checkpoint file."""
    _, path = sam2_oracle.official_model(size)
    model = build_sam2(size).eval()
    model.load_official_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"], path)
    return model


@pytest.fixture(scope="module", params=["tiny", "base_plus"])
def image_pair(request, images_dir, test_device):
    """(size, official predictor with the image set, our model, our image state, the image), both
    models on the test device (a copy of the cached official model when that is not the CPU)."""
    size = request.param
    image = np.asarray(Image.open(images_dir / "truck.jpg").convert("RGB"))
    official, _ = sam2_oracle.official_model(size)
    if test_device.type != "cpu":
        official = copy.deepcopy(official).to(test_device)
    predictor = sam2_oracle.image_predictor(official)
    predictor.set_image(image)
    ours = sam2_model(size).to(test_device)
    return size, predictor, ours, ours.encode_image(image), image


def test_image_embedding_matches_predictor(image_pair):
    size, predictor, ours, state, image = image_pair
    assert state.original_size == image.shape[:2]
    assert state.input_size == (1024, 1024)  # the image fills the square input
    features = predictor._features
    assert_close(state.features, features["image_embed"], what=f"{size} image_embed")
    assert len(state.high_res_features) == 2
    for i, (a, b) in enumerate(zip(state.high_res_features, features["high_res_feats"])):
        assert_close(a, b, what=f"{size} high_res_feats[{i}]")


def test_preprocessing_matches_official_transforms(image_pair):
    size, predictor, ours, state, image = image_pair
    with torch.inference_mode():
        pixels = ours.preprocess(torch.from_numpy(image.copy()).permute(2, 0, 1)).pixels
    assert_close(pixels[0].cpu(), predictor._transforms(image).cpu(), what="preprocessed image")


def _ours_predict(ours, state, case, mask_input=None):
    """Our model on one official ``predict`` case, through the family interface: (logits at image
    size with torch, with OpenCV, IoU, clamped low-res, object score)."""
    kwargs = {}
    device = ours.device
    with torch.inference_mode():
        if "point_coords" in case:
            coords = ours.to_input_frame(np.asarray(case["point_coords"]), state)
            kwargs["point_coords"] = torch.from_numpy(coords)[None].to(device)
            kwargs["point_labels"] = torch.tensor(case["point_labels"], dtype=torch.int32, device=device)[None]
        if "box" in case:
            boxes = np.asarray(case["box"], dtype=np.float32).reshape(-1, 2, 2)
            kwargs["boxes"] = torch.from_numpy(ours.to_input_frame(boxes, state)).reshape(-1, 4).to(device)
        if mask_input is not None:
            mask = torch.as_tensor(mask_input, dtype=torch.float32, device=device)
            kwargs["mask_input"] = mask.reshape(1, 1, 256, 256)
        pred = ours.decode_prompts(state, multimask_output=case["multimask_output"], **kwargs)
        low, iou = ours.decode(state, multimask_output=case["multimask_output"], reference=True, **kwargs)
        assert torch.equal(low, pred.masks) and torch.equal(iou, pred.iou_predictions)
        # the fast engine (what decode runs by default) on the same prompts: float32 rounding
        fast_low, fast_iou = ours.decode(state, multimask_output=case["multimask_output"], **kwargs)
        assert_close(fast_low, pred.masks, what="fast decoder logits")
        assert float((fast_iou - pred.iou_predictions).abs().max()) <= IOU_TOL
        logits = ours.postprocess_masks(pred.masks, state.input_size, state.original_size).cpu()
        with_cv2 = np.stack([ours.upscale_logits(m, state) for m in pred.masks.flatten(0, 1).cpu().numpy()])
        pred = type(pred)(*(t.cpu() for t in pred))
        return logits, with_cv2, pred.iou_predictions, ours.clamp_low_res(pred.masks), pred.object_score_logits


def _predict_with_object_scores(predictor, **kwargs):
    """``predictor.predict(**kwargs)`` and the object-score logits its decoder computed (the
    predictor drops them), caught with a forward hook."""
    caught = []
    hook = predictor.model.sam_mask_decoder.register_forward_hook(lambda mod, args, out: caught.append(out[3]))
    try:
        result = predictor.predict(**kwargs)
    finally:
        hook.remove()
    assert len(caught) == 1
    return result, caught[0].cpu()


@pytest.mark.parametrize("name", list(CASES))
def test_predictions_match_predictor(image_pair, name):
    size, predictor, ours, state, image = image_pair
    case = CASES[name]
    mask_input = None
    if name.startswith("mask input"):
        # the best of a first click's three masks, fed back as the mask prompt (the usual refinement)
        _, first_iou, first_low = predictor.predict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
        mask_input = first_low[int(np.argmax(first_iou))][None]
    args = {k: np.asarray(v) for k, v in case.items() if k != "multimask_output"}
    (masks, iou, low), scores = _predict_with_object_scores(
        predictor, **args, mask_input=mask_input, multimask_output=case["multimask_output"], return_logits=True
    )
    our_logits, our_cv2, our_iou, our_low, our_scores = _ours_predict(ours, state, case, mask_input)
    batched = np.asarray(case.get("box", [])).ndim == 2
    if not batched:  # the official predictor drops the batch axis of a single prompt
        masks, iou, low = masks[None], iou[None], low[None]
    assert our_low.shape == low.shape == (masks.shape[0], 3 if case["multimask_output"] else 1, 256, 256)
    assert_close(our_low, torch.from_numpy(low), what=f"{size} {name} low-res logits")
    assert float((our_iou - torch.from_numpy(iou)).abs().max()) <= IOU_TOL
    assert_close(our_scores, scores, rel=SCORE_TOL, what=f"{size} {name} object score")
    assert our_logits.shape == masks.shape
    their_masks = (masks > predictor.mask_threshold).reshape(-1, *image.shape[:2])
    for ours_up in (our_logits.numpy(), our_cv2):
        our_masks = (ours_up > ours.mask_threshold).reshape(-1, *image.shape[:2])
        for a, b in zip(our_masks, their_masks):
            assert b.any() and not b.all()  # a real mask, not a degenerate one
            assert oracle.mask_iou(a, b) >= MASK_IOU_MIN


def test_best_only_and_region(image_pair):
    """The predictor's options on the family interface: best_only keeps the mask of highest IoU,
    region the top-left part of the logits."""
    size, predictor, ours, state, image = image_pair
    coords = torch.from_numpy(ours.to_input_frame(np.array([[[500, 375]], [[1125, 625]]]), state)).to(ours.device)
    labels = torch.ones(2, 1, dtype=torch.int32, device=ours.device)
    for reference in (True, False):  # the plain modules, and the fast engine (to float32 rounding)
        with torch.inference_mode():
            low, iou = ours.decode(state, coords, labels, reference=reference)
            best_low, best_iou = ours.decode(state, coords, labels, best_only=True, reference=reference)
            part, _ = ours.decode(state, coords, labels, region=(10, 20), reference=reference)
        best = iou.argmax(1)
        assert torch.equal(best_iou[:, 0], iou[torch.arange(2), best])
        assert_close(best_low[:, 0], low[torch.arange(2), best], what="best mask")
        assert_close(part, low[..., :40, :80], what="region")
    assert ours.mask_region(state) == (64, 64)


def test_samkit_predictor_runs_sam2(image_pair):
    """samkit.Predictor on our SAM 2 model (through the family interface) gives the official masks,
    scores and low-res logits: points, a box with a point, a mask input, single and multi-mask,
    logits at image size, batched boxes. The low-res logits are bounded to +-32 as the official
    predictor bounds them, after the masks were upscaled from the unbounded ones."""
    size, predictor, ours, state, image = image_pair
    ours_predictor = samkit.Predictor(ours)
    ours_predictor.set_image_state(state)
    click = dict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
    _, first_scores, first_low = predictor.predict(**click)
    mask_input = first_low[int(np.argmax(first_scores))][None]
    for kwargs in (
        click,
        dict(box=np.array([425, 600, 700, 875]), point_coords=np.array([[575, 750]]), point_labels=np.array([0]),
             multimask_output=False),
        dict(click, mask_input=mask_input, multimask_output=False),
        dict(click, return_logits=True),
    ):
        masks, scores, low = ours_predictor.predict(**kwargs)
        ref_masks, ref_scores, ref_low = predictor.predict(**kwargs)
        assert masks.shape == ref_masks.shape  # (the official gives float 0/1 masks, ours bool)
        assert np.abs(scores - ref_scores).max() <= IOU_TOL
        assert np.abs(low).max() <= 32.0
        assert_close(torch.from_numpy(low), torch.from_numpy(ref_low), what="low-res logits")
        if kwargs.get("return_logits"):
            assert_close(torch.from_numpy(masks), torch.from_numpy(ref_masks), rel=1e-4, what="logits at image size")
            masks, ref_masks = masks > 0, ref_masks > 0
        for a, b in zip(masks, ref_masks):
            assert oracle.mask_iou(a, b) >= MASK_IOU_MIN
    boxes = np.array(CASES["batched boxes, single"]["box"])
    masks, scores, low = ours_predictor.predict_batch(boxes=boxes)
    ref_masks, ref_scores, ref_low = predictor.predict(box=boxes, multimask_output=False)
    assert np.abs(scores - ref_scores).max() <= IOU_TOL
    assert_close(torch.from_numpy(low), torch.from_numpy(ref_low), what="batched low-res logits")
    for a, b in zip(masks.reshape(-1, *image.shape[:2]), ref_masks.reshape(-1, *image.shape[:2])):
        assert oracle.mask_iou(a, b) >= MASK_IOU_MIN


def test_low_res_logits_are_bounded_after_upscaling(image_pair):
    """Logits beyond +-32 (the hypernetworks' outputs scaled up): the masks and logits at image size
    come from the unbounded low-res logits, only the low-res logits returned are bounded, as
    SAM2ImagePredictor does (bounding first would move mask edges where the logits are steep)."""
    size, predictor, ours, state, image = image_pair
    steep = copy.deepcopy(ours)
    with torch.no_grad():
        for mlp in steep.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(20)
            mlp.layers[-1].bias.mul_(20)
    steep_predictor = samkit.Predictor(steep)
    steep_predictor.set_image_state(state)
    click = dict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
    logits, _, low = steep_predictor.predict(**click, return_logits=True)
    with torch.inference_mode():
        frame = torch.from_numpy(steep.to_input_frame(click["point_coords"], state))[None]
        unbounded, _ = steep.decode(state, frame, torch.ones(1, 1, dtype=torch.int32))
    assert float(unbounded.abs().max()) > 100 and np.abs(low).max() == 32.0
    assert np.array_equal(low, unbounded[0].clamp(-32, 32).numpy())
    expected = steep.postprocess_masks(unbounded, state.input_size, state.original_size)[0]
    assert np.abs(logits).max() > 100
    assert_close(torch.from_numpy(logits), expected, rel=1e-4, what="logits at image size")


def test_embedding_cache_keeps_the_high_res_maps(image_pair, tmp_path):
    """An image state saved to disk and read back (ImageState.to_file / from_file) holds the
    embedding and both high-res maps unchanged; a second predictor on the same cache directory
    takes them from disk, runs no encoder and gives the same masks as the official predictor."""
    size, predictor, ours, state, image = image_pair
    saved = tmp_path / "state.pt"
    torch.save(state.to_file(), saved)
    back = ImageState.from_file(torch.load(saved, weights_only=True))
    assert back.original_size == state.original_size and back.input_size == state.input_size
    assert len(back.high_res_features) == 2
    for a, b in zip((back.features, *back.high_res_features), (state.features, *state.high_res_features)):
        assert torch.equal(a, b)

    first = samkit.Predictor(ours, cache_dir=tmp_path / "cache")
    first.compute_image_state = lambda array: state  # the state of this very image, computed above
    first.set_image(image)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    second = samkit.Predictor(ours, cache_dir=tmp_path / "cache")
    second.set_image(image)
    assert second.encoder_calls == 0 and second.cache.hits == 1
    for a, b in zip(second.image_state.high_res_features, state.high_res_features):
        assert torch.equal(a, b)
    masks, scores, _ = second.predict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
    ref_masks, ref_scores, _ = predictor.predict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]))
    assert np.abs(scores - ref_scores).max() <= IOU_TOL
    for a, b in zip(masks, ref_masks):
        assert oracle.mask_iou(a, b) >= MASK_IOU_MIN
