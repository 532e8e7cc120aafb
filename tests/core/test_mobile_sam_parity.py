"""MobileSAM (TinyViT) against the reference outputs recorded in ../shared/reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

import samkit


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def reference(shared_dir):
    folder = shared_dir / "reference" / "mobile_sam_random"
    cases = json.loads((folder / "cases_truck.json").read_text())["cases"]
    return np.load(folder / "expected_truck.npz"), cases


@pytest.fixture(scope="module")
def truck_predictor(mobile_sam_checkpoint, images_dir):
    model = samkit.load_model(mobile_sam_checkpoint, device="cpu")
    predictor = samkit.Predictor(model)
    predictor.set_image(images_dir / "truck.jpg")
    return predictor


def case_kwargs(case: dict) -> dict:
    kwargs = {"multimask_output": case["multimask_output"]}
    if "point_coords" in case:
        kwargs["point_coords"] = np.array(case["point_coords"])
        kwargs["point_labels"] = np.array(case["point_labels"])
    if "box" in case:
        kwargs["box"] = np.array(case["box"])
    return kwargs


def test_checkpoint_loads_as_mobile_sam(mobile_sam_checkpoint):
    model = samkit.load_model(mobile_sam_checkpoint, device="cpu")
    assert model.arch == "mobile_sam"
    # 10,130,092 parameters in the official file, 321,640 of them in the unused classifier head.
    assert model.num_parameters(include_unused_head=True) == 10_130_092
    assert model.num_parameters() == 10_130_092 - 321_640


def test_image_embedding_matches_reference(truck_predictor, reference):
    expected, _ = reference
    embedding = truck_predictor.get_image_embedding().numpy()
    assert embedding.shape == (1, 256, 64, 64)
    np.testing.assert_allclose(embedding, expected["image_embedding"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("index", range(5))
def test_prompt_case_matches_reference(truck_predictor, reference, index):
    expected, cases = reference
    masks, scores, low_res = truck_predictor.predict(**case_kwargs(cases[index]))
    expected_masks = expected[f"case{index}_masks"]
    assert masks.shape == expected_masks.shape and masks.dtype == bool
    np.testing.assert_allclose(low_res, expected[f"case{index}_low_res_logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(scores, expected[f"case{index}_iou_predictions"], atol=1e-4, rtol=0)
    for ours, theirs in zip(masks, expected_masks):
        assert mask_iou(ours, theirs) >= 0.999


def test_mask_prompt_refinement_matches_reference(truck_predictor, reference):
    expected, cases = reference
    kwargs = case_kwargs(cases[1])
    _, _, low_res = truck_predictor.predict(**kwargs)
    masks, scores, _ = truck_predictor.predict(mask_input=low_res, **kwargs)
    np.testing.assert_allclose(scores, expected["case1_refined_iou_predictions"], atol=1e-4, rtol=0)
    for ours, theirs in zip(masks, expected["case1_refined_masks"]):
        assert mask_iou(ours, theirs) >= 0.999
