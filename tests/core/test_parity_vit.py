"""ViT-B parity: samkit against the official `segment-anything` package on the same weights.

No pretrained weights can be downloaded here, so the proof is parity on seeded random weights in
which every tensor was moved away from its initial value (norms, biases, rel-pos tables,
positional embeddings: see oracle.perturb_). The official model's state_dict is saved in the
official checkpoint format and loaded with `samkit.load_model(path)`, which must infer ViT-B.
Both predictors then see the same real photo and the same prompts. The official outputs are
computed once per session (the official ViT-B encoder costs ~10 s on a 2-core CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import samkit

try:  # tests/core as a package or as a plain directory on sys.path
    from . import oracle
except ImportError:
    import oracle

# Tolerances (fp32 on both sides; the reference itself varies run to run by ~1e-5).
EMBED_TOL = 1e-4  # max |diff| of the image embedding, relative to its largest value
LOGIT_TOL = 2e-4  # max |diff| of low-res logits, relative to their largest value (std ~2)
IOU_TOL = 1e-4  # max |diff| of IoU predictions
MASK_IOU = 0.999  # per-mask IoU of the full-size boolean masks

# Prompt cases on truck.jpg (1800x1200): points (positive and negative), a box, a box with a
# negative point, single and multi-mask output, logits returned at image size.
CASES = {
    "one_point_multi": dict(point_coords=[[1146.5, 323.7]], point_labels=[1], multimask_output=True),
    "pos_neg_points_single": dict(
        point_coords=[[500.0, 375.0], [1463.9, 1095.3]], point_labels=[1, 0], multimask_output=False
    ),
    "three_points_multi": dict(
        point_coords=[[1091.9, 875.4], [978.5, 1122.1], [230.0, 640.0]],
        point_labels=[1, 1, 0],
        multimask_output=True,
    ),
    "box_single": dict(box=[425.0, 600.0, 700.0, 875.0], multimask_output=False),
    "box_multi": dict(box=[75.0, 275.0, 1725.0, 850.0], multimask_output=True),
    "box_neg_point_single": dict(
        box=[425.0, 600.0, 700.0, 875.0], point_coords=[[575.0, 750.0]], point_labels=[0],
        multimask_output=False,
    ),
    "box_pos_point_multi": dict(
        box=[1375.0, 550.0, 1650.0, 800.0], point_coords=[[1500.0, 700.0]], point_labels=[1],
        multimask_output=True,
    ),
    "point_logits": dict(
        point_coords=[[900.0, 600.0]], point_labels=[1], multimask_output=True, return_logits=True
    ),
}
# A second call that feeds an earlier call's best low-res logits back as the mask prompt.
REFINE_FROM = "one_point_multi"
REFINE = dict(point_coords=[[1146.5, 323.7], [1200.0, 500.0]], point_labels=[1, 0])
# Batched boxes (XYXY, inside the image) for predict_batch / official predict_torch.
N_BATCH = 12


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _prompt_args(case: dict) -> dict:
    out = {}
    for key, value in case.items():
        out[key] = np.asarray(value, dtype=np.float64 if key != "point_labels" else np.int64) if isinstance(
            value, list
        ) else value
    return out


def _batch_boxes(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    x0 = rng.uniform(0, w * 0.7, N_BATCH)
    y0 = rng.uniform(0, h * 0.7, N_BATCH)
    bw = rng.uniform(40, w * 0.3, N_BATCH)
    bh = rng.uniform(40, h * 0.3, N_BATCH)
    return np.stack([x0, y0, np.minimum(x0 + bw, w), np.minimum(y0 + bh, h)], axis=1).round(1)


@pytest.fixture(scope="module")
def truck(images_dir) -> np.ndarray:
    return np.array(Image.open(images_dir / "truck.jpg").convert("RGB"))


@pytest.fixture(scope="module")
def official_vit_b():
    return oracle.official_vit_b()


@pytest.fixture(scope="module")
def official_outputs(official_vit_b, truck):
    """Everything the official predictor returns for the cases, computed once."""
    sam = oracle.official()
    model, _ = official_vit_b
    pred = sam.SamPredictor(model)
    with torch.inference_mode():
        pred.set_image(truck)
        out = {"embedding": _np(pred.get_image_embedding()).copy()}
        for name, case in CASES.items():
            out[name] = pred.predict(**_prompt_args(case))
        best = int(np.argmax(out[REFINE_FROM][1]))
        out["refine_input"] = out[REFINE_FROM][2][best][None]
        out["refine"] = pred.predict(
            **_prompt_args(REFINE), mask_input=out["refine_input"], multimask_output=False
        )
        h, w = truck.shape[:2]
        boxes = _batch_boxes(h, w)
        boxes_t = pred.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (h, w))
        masks, scores, low = pred.predict_torch(None, None, boxes=boxes_t, multimask_output=False)
        out["batch_boxes"] = (boxes, _np(masks), _np(scores), _np(low))
        # batched points: one positive and one negative point per object, multimask
        rng = np.random.default_rng(11)
        pts = np.stack([rng.uniform(0, w, (6, 2)) * [1, h / w], rng.uniform(0, w, (6, 2)) * [1, h / w]], 1)
        labels = np.tile(np.array([[1, 0]]), (6, 1))
        pts_t = pred.transform.apply_coords_torch(torch.as_tensor(pts, dtype=torch.float), (h, w))
        masks, scores, low = pred.predict_torch(pts_t, torch.as_tensor(labels), multimask_output=True)
        out["batch_points"] = (pts, labels, _np(masks), _np(scores), _np(low))
    return out


@pytest.fixture(scope="module")
def ours(official_vit_b, truck):
    _, path = official_vit_b
    model = samkit.load_model(str(path), device="cpu")
    pred = samkit.Predictor(model)
    pred.set_image(truck)
    return pred


def _assert_close(ours_arr, ref_arr, rel_tol: float, what: str):
    ours_arr = np.asarray(ours_arr, dtype=np.float64)
    ref_arr = np.asarray(ref_arr, dtype=np.float64)
    assert ours_arr.shape == ref_arr.shape, f"{what}: shape {ours_arr.shape} != official {ref_arr.shape}"
    scale = max(1.0, float(np.abs(ref_arr).max()))
    err = float(np.abs(ours_arr - ref_arr).max())
    assert err <= rel_tol * scale, f"{what}: max |diff| {err:.3g} > {rel_tol:g} x {scale:.3g}"


def _assert_masks(ours_masks, ref_masks, what: str):
    ours_masks = np.asarray(ours_masks)
    ref_masks = np.asarray(ref_masks)
    assert ours_masks.dtype == np.bool_, f"{what}: masks dtype {ours_masks.dtype}, expected bool"
    assert ours_masks.shape == ref_masks.shape, f"{what}: mask shape {ours_masks.shape} != {ref_masks.shape}"
    flat_o = ours_masks.reshape(-1, *ours_masks.shape[-2:])
    flat_r = ref_masks.reshape(-1, *ref_masks.shape[-2:])
    for i, (a, b) in enumerate(zip(flat_o, flat_r)):
        assert b.any() and not b.all(), f"{what}: official mask {i} is trivial; the test proves nothing"
        iou = oracle.mask_iou(a, b)
        assert iou >= MASK_IOU, f"{what}: mask {i} IoU {iou:.5f} < {MASK_IOU}"


def test_weights_were_perturbed_everywhere():
    """The oracle's weights differ from the official initialisation in every tensor."""
    sam = oracle.official()
    torch.manual_seed(oracle.VIT_B_SEED)
    init = {k: v.clone() for k, v in sam.sam_model_registry["vit_b"]().state_dict().items()}
    model, _ = oracle.official_vit_b()
    assert oracle.unperturbed_keys(init, model.state_dict()) == []
    assert len(init) == 314


def test_checkpoint_loads_as_vit_b(official_vit_b, ours):
    model, _ = official_vit_b
    assert ours.model.arch == "vit_b"
    ref = model.state_dict()
    got = ours.model.state_dict()
    assert set(got) == set(ref), (sorted(set(ref) - set(got))[:5], sorted(set(got) - set(ref))[:5])
    for key, value in ref.items():
        assert torch.equal(got[key].float().cpu(), value.float()), f"{key} loaded with other values"


def test_image_embedding(ours, official_outputs):
    emb = _np(ours.get_image_embedding())
    assert emb.dtype == np.float32
    _assert_close(emb, official_outputs["embedding"], EMBED_TOL, "image embedding")


@pytest.mark.parametrize("name", list(CASES))
def test_predict(ours, official_outputs, name):
    case = CASES[name]
    masks, scores, low = ours.predict(**_prompt_args(case))
    ref_masks, ref_scores, ref_low = official_outputs[name]
    n = 3 if case["multimask_output"] else 1
    assert np.asarray(masks).shape == (n, *ours.original_size)
    assert np.asarray(scores).dtype == np.float32 and np.asarray(low).dtype == np.float32
    _assert_close(low, ref_low, LOGIT_TOL, f"{name}: low-res logits")
    _assert_close(scores, ref_scores, IOU_TOL, f"{name}: IoU predictions")
    if case.get("return_logits"):
        _assert_close(masks, ref_masks, LOGIT_TOL, f"{name}: logits at image size")
        _assert_masks(np.asarray(masks) > 0, ref_masks > 0, name)
    else:
        _assert_masks(masks, ref_masks, name)


def test_mask_input_refinement(ours, official_outputs):
    _, _, low = ours.predict(**_prompt_args(CASES[REFINE_FROM]))
    _, ref_scores, _ = official_outputs[REFINE_FROM]
    mask_input = low[int(np.argmax(ref_scores))][None]
    _assert_close(mask_input, official_outputs["refine_input"], LOGIT_TOL, "refinement input")
    masks, scores, low = ours.predict(**_prompt_args(REFINE), mask_input=mask_input, multimask_output=False)
    ref_masks, ref_scores, ref_low = official_outputs["refine"]
    _assert_close(low, ref_low, LOGIT_TOL, "refined low-res logits")
    _assert_close(scores, ref_scores, IOU_TOL, "refined IoU predictions")
    _assert_masks(masks, ref_masks, "refined")
    # the mask prompt must matter: without it the answer differs
    plain = ours.predict(**_prompt_args(REFINE), multimask_output=False)[2]
    assert np.abs(plain - low).max() > 0.1


def test_predict_batch_boxes(ours, official_outputs):
    boxes, ref_masks, ref_scores, ref_low = official_outputs["batch_boxes"]
    masks, scores, low = ours.predict_batch(boxes=boxes, multimask_output=False)
    h, w = ours.original_size
    assert np.asarray(masks).shape == (N_BATCH, 1, h, w)
    _assert_close(low, ref_low, LOGIT_TOL, "batched boxes: low-res logits vs official predict_torch")
    _assert_close(scores, ref_scores, IOU_TOL, "batched boxes: IoU vs official predict_torch")
    _assert_masks(masks, ref_masks, "batched boxes vs official predict_torch")
    # ... and equals one predict() per box
    for i, box in enumerate(boxes[:4]):
        m1, s1, l1 = ours.predict(box=box, multimask_output=False)
        _assert_close(l1, low[i], 1e-5, f"box {i}: predict vs predict_batch logits")
        _assert_close(s1, scores[i], 1e-5, f"box {i}: predict vs predict_batch IoU")
        assert oracle.mask_iou(m1[0], masks[i][0]) >= MASK_IOU


def test_predict_batch_points(ours, official_outputs):
    pts, labels, ref_masks, ref_scores, ref_low = official_outputs["batch_points"]
    masks, scores, low = ours.predict_batch(point_coords=pts, point_labels=labels, multimask_output=True)
    assert np.asarray(low).shape == (len(pts), 3, 256, 256)
    _assert_close(low, ref_low, LOGIT_TOL, "batched points: low-res logits")
    _assert_close(scores, ref_scores, IOU_TOL, "batched points: IoU predictions")
    _assert_masks(masks, ref_masks, "batched points")
