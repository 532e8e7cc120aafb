"""Code written for Ultralytics runs on samkit: results answer to Ultralytics' attribute names
(while staying the arrays they were), print as one line, and SAMPredictor(overrides=...) takes
set_image / prompts / reset_image / segment-everything keywords as in Ultralytics' docs."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import samkit
from samkit.ultralytics_api import Boxes, Masks

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def known_result():
    """Two masks whose outlines are known: a rectangle and a disc, on a 60 x 80 image."""
    image = np.zeros((60, 80, 3), np.uint8)
    rect = np.zeros((60, 80), bool)
    rect[10:30, 20:50] = True
    disc = np.zeros((60, 80), np.uint8)
    cv2.circle(disc, (60, 40), 12, 1, -1)
    boxes = np.array([[20, 10, 50, 30], [48, 28, 73, 53]], float)
    return samkit.Result(image, np.stack([rect, disc.astype(bool)]), boxes, np.array([0.9, 0.7]), "img.png")


def test_masks_are_still_the_array_and_answer_to_ultralytics_names(known_result):
    masks = known_result.masks
    assert isinstance(masks, np.ndarray) and masks.shape == (2, 60, 80) and masks.dtype == bool and len(masks) == 2
    assert int(masks.sum()) == 20 * 30 + int(masks[1].sum())
    assert type(masks[0]) is np.ndarray and [type(m) for m in masks] == [np.ndarray, np.ndarray]
    assert isinstance(masks.data, torch.Tensor) and masks.data.dtype == torch.bool
    assert torch.equal(masks.data, torch.from_numpy(np.asarray(masks)))
    # xy: the outline of each mask (its pixel corners for the rectangle), xyn divided by (W, H)
    assert sorted(map(tuple, masks.xy[0].tolist())) == [(20, 10), (20, 29), (49, 10), (49, 29)]
    assert masks.xy[0].dtype == np.float32 and np.allclose(masks.xyn[0], masks.xy[0] / [80, 60])
    filled = cv2.fillPoly(np.zeros((60, 80), np.uint8), [masks.xy[1].astype(np.int32)], 1).astype(bool)
    assert (filled & masks[1]).sum() / (filled | masks[1]).sum() > 0.95
    assert Masks(np.zeros((0, 60, 80), bool)).xy == []
    assert Masks(np.zeros((1, 60, 80), bool)).xy[0].shape == (0, 2)


def test_boxes_are_still_the_array_and_answer_to_ultralytics_names(known_result):
    boxes = known_result.boxes
    assert isinstance(boxes, np.ndarray) and boxes.shape == (2, 4)
    assert np.array_equal(np.asarray(boxes), [[20, 10, 50, 30], [48, 28, 73, 53]])
    assert torch.equal(boxes.xyxy, torch.tensor([[20, 10, 50, 30], [48, 28, 73, 53]], dtype=torch.float32))
    assert torch.allclose(boxes.xywh, torch.tensor([[35, 20, 30, 20], [60.5, 40.5, 25, 25]]))
    assert torch.allclose(boxes.xyxyn[0], torch.tensor([20 / 80, 10 / 60, 50 / 80, 30 / 60]))
    assert torch.allclose(boxes.xywhn[0], torch.tensor([35 / 80, 20 / 60, 30 / 80, 20 / 60]))
    assert torch.allclose(boxes.conf, torch.tensor([0.9, 0.7])) and torch.equal(boxes.cls, torch.tensor([0.0, 1.0]))
    assert boxes.data.shape == (2, 6) and torch.allclose(boxes.data[1], torch.tensor([48, 28, 73, 53, 0.7, 1.0]))
    assert boxes.id is None and boxes.orig_shape == (60, 80)
    # per box, as both conventions iterate: unpacking (samkit) and box.xyxy[0] / box.conf (Ultralytics)
    for box, want, score in zip(boxes, [[20, 10, 50, 30], [48, 28, 73, 53]], [0.9, 0.7]):
        x0, y0, x1, y1 = box
        assert [x0, y0, x1, y1] == want and box.xyxy[0].tolist() == want
        assert box.xyxy.shape == (1, 4) and float(box.conf) == pytest.approx(score) and box.cls.shape == (1,)
    assert np.array_equal(boxes[:, 0], [20, 48]) and type(boxes[:, 0]) is np.ndarray
    assert torch.allclose(boxes[boxes.conf.numpy() < 0.8].conf, torch.tensor([0.7]))


def test_print_result_is_one_short_line(known_result):
    text = str(known_result)
    assert text == repr(known_result) == "samkit.Result(img.png, 80x60 image, 2 masks, scores 0.70-0.90)"
    empty = samkit.Result(np.zeros((5, 5, 3), np.uint8), np.zeros((0, 5, 5), bool), np.zeros((0, 4)), np.zeros(0))
    assert str(empty) == "samkit.Result(5x5 image, 0 masks)"


@pytest.fixture(scope="module")
def sam_predictor(mobile_sam_checkpoint):
    # conf=-1: the seeded random weights predict low (even negative) IoUs, and the tests compare every mask
    return samkit.SAMPredictor(overrides=dict(conf=-1.0, task="segment", mode="predict", imgsz=1024,
                                              model=str(mobile_sam_checkpoint), device="cpu"))


def test_sam_predictor_prompts_on_the_set_image(sam_predictor, dog_predictor, images_dir):
    image = images_dir / "dog.jpg"
    sam_predictor.set_image(str(image))
    encodes = sam_predictor.sam.predictor.encoder_calls
    result = sam_predictor(bboxes=[50, 40, 300, 400])[0]
    want, score, _ = dog_predictor.predict(box=np.array([50, 40, 300, 400]), multimask_output=False)
    assert np.array_equal(result.masks[0], want[0]) and result.boxes.conf[0] == pytest.approx(float(score[0]))
    points = sam_predictor(points=[300, 250], labels=[1])[0]
    want, _, _ = dog_predictor.predict(point_coords=np.array([[300, 250]]), point_labels=np.array([1]),
                                       multimask_output=False)
    assert np.array_equal(points.masks[0], want[0])
    # a detector's boxes as a torch tensor, and the image again as cv2 reads it (BGR)
    sam_predictor.set_image(cv2.imread(str(image)))
    again = sam_predictor(bboxes=torch.tensor([[50.0, 40.0, 300.0, 400.0]]))[0]
    assert np.array_equal(again.masks[0], result.masks[0])
    assert sam_predictor.sam.predictor.encoder_calls == encodes, "the image is encoded once for all prompts"
    assert sam_predictor.features.shape == (1, 256, 64, 64)
    sam_predictor.reset_image()
    assert sam_predictor.features is None
    with pytest.raises(samkit.PromptError, match="set_image"):
        sam_predictor(bboxes=[50, 40, 300, 400])


def test_sam_predictor_segment_everything_keywords(sam_predictor, mobile_sam, images_dir):
    image = images_dir / "dog.jpg"
    result = sam_predictor(source=str(image), crop_n_layers=1, points_stride=2, points_batch_size=8,
                           conf_thres=0.0, stability_score_thresh=0.0)[0]
    records = samkit.MaskGenerator(mobile_sam, points_per_side=2, crop_n_layers=1, points_per_batch=8,
                                   pred_iou_thresh=0.0, stability_score_thresh=0.0).generate(image)
    assert len(result) == len(records) > 0 and result.path == str(image)
    key = lambda masks: sorted(m.tobytes() for m in masks)  # noqa: E731
    assert key(result.masks) == key([r["segmentation"] for r in records])
    with pytest.raises(TypeError, match="unknown segment-everything option 'points_per_stride'"):
        sam_predictor(source=str(image), points_per_stride=4)


def test_sam_predictor_conf_drops_low_scores(mobile_sam_checkpoint, images_dir):
    strict = samkit.SAMPredictor(overrides=dict(conf=0.999, model=str(mobile_sam_checkpoint), device="cpu"))
    strict.set_image(str(images_dir / "dog.jpg"))
    assert len(strict(bboxes=[50, 40, 300, 400])[0]) == 0
    with pytest.raises(TypeError, match="does not know the override"):
        samkit.SAMPredictor(overrides=dict(model=str(mobile_sam_checkpoint), confidence=0.3))


def test_the_readme_sam_predictor_example_runs(mobile_sam_checkpoint, images_dir, tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(from samkit import SAMPredictor\b.*?)```", readme, re.S)
    assert block, "README has no SAMPredictor example"
    # the seeded model and a photo large enough for the example's prompts; a 2 x 2 grid instead
    # of 64 x 64 keeps segment-everything short on a CPU
    code = block.group(1).replace('"mobile_sam.pt"', repr(str(mobile_sam_checkpoint)))
    code = code.replace('"image.jpg"', repr(str(images_dir / "truck.jpg")))
    code = code.replace("points_stride=64", "points_stride=2")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert isinstance(namespace["results"][0], samkit.Result)


def test_result_arrays_keep_their_type_through_boxes_helpers():
    boxes = Boxes(np.array([[1, 2, 3, 4]]), [0.5], (10, 10))
    assert isinstance(boxes * 2, np.ndarray) and np.array_equal(boxes * 2, [[2, 4, 6, 8]])
