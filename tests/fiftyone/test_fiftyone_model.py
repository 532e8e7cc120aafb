"""``SamModel`` through FiftyOne's own ``apply_model``, with and without a prompt field."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import fiftyone.core.labels as fol
import fiftyone.core.models as fom

import samkit
from samkit.fiftyone import SamModel, SamModelConfig
from samkit.fiftyone.segmenter import confidence_of

from fo_checks import check_tight, image_size, iou

EVERYTHING = dict(points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                  box_nms_thresh=1.0, max_masks=3)


def test_model_interface(checkpoint):
    model = SamModel(model=checkpoint)
    assert isinstance(model, fom.Model) and isinstance(model, fom.SamplesMixin)
    assert not isinstance(model, fom.TorchModelMixin)
    assert model.media_type == "image" and model.ragged_batches is False
    assert model.transforms is None and model.preprocess is False
    assert isinstance(model.config, SamModelConfig) and model.config.model == checkpoint
    with pytest.raises(samkit.SamkitError, match="unknown SamModel option"):
        SamModel(points_per_sid=3)
    # FiftyOne's generic loader builds it from a config dict
    loaded = fom.load_model({"type": "samkit.fiftyone.model.SamModel", "config": {"model": checkpoint, "max_masks": 2}})
    assert isinstance(loaded, SamModel) and loaded.config.max_masks == 2


def test_apply_model_segment_everything(make_dataset, photos, checkpoint):
    dataset = make_dataset([photos["dog.jpg"], photos["picture2.jpg"]])
    dataset.apply_model(SamModel(model=checkpoint, **EVERYTHING), "auto", skip_failures=False)
    assert "torchvision" not in sys.modules
    for sample in dataset:
        width, height = image_size(sample.filepath)
        dets = sample.auto.detections
        assert len(dets) == 3
        for det in dets:
            full = check_tight(det, width, height)
            assert det.confidence == confidence_of(det["predicted_iou"]) and det["area"] == int(full.sum())
            assert 0.0 <= det["stability_score"] <= 1.0


def test_apply_model_with_box_and_point_prompts(make_dataset, photos, checkpoint):
    dataset = make_dataset([photos["dogs.jpg"], photos["groceries.jpg"], photos["picture1.jpg"]], boxes=True)
    empty = dataset.select_by("filepath", [photos["picture1.jpg"]]).first()
    empty.gt = None  # no prompts: an empty result, not a failure
    empty.save()
    model = SamModel(model=checkpoint, box_batch_size=1)
    # batch_size=2: FiftyOne hands predict_all ragged lists of differently sized images
    dataset.apply_model(model, "boxes_sam", prompt_field="gt", batch_size=2, skip_failures=False)

    predictor = samkit.Predictor(samkit.load_model(checkpoint))
    for sample in dataset:
        width, height = image_size(sample.filepath)
        if sample.gt is None:
            assert sample.boxes_sam.detections == []
            continue
        assert [d.label for d in sample.boxes_sam.detections] == [d.label for d in sample.gt.detections]
        predictor.set_image(sample.filepath)
        for det, prompt in zip(sample.boxes_sam.detections, sample.gt.detections):
            assert det["prompt_id"] == prompt.id
            full = check_tight(det, width, height)
            x, y, w, h = prompt.bounding_box
            masks, scores, _ = predictor.predict(box=np.array([x * width, y * height, (x + w) * width,
                                                               (y + h) * height]), multimask_output=False)
            assert iou(full, masks[0]) > 0.999
            # the raw predicted IoU (random weights score some masks below 0), confidence clamped
            assert det["predicted_iou"] == pytest.approx(float(scores[0]), abs=1e-4)
            assert det.confidence == confidence_of(det["predicted_iou"])

    sample = dataset.select_by("filepath", [photos["groceries.jpg"]]).first()
    sample["kp"] = fol.Keypoints(keypoints=[fol.Keypoint(label="bag", points=[[0.5, 0.5], [0.05, 0.05]],
                                                         sam_labels=[1, 0])])
    sample.save()
    view = dataset.exists("kp")
    view.apply_model(model, "kp_sam", prompt_field="kp", skip_failures=False)
    det = view.first().kp_sam.detections[0]
    width, height = image_size(sample.filepath)
    full = check_tight(det, width, height)
    predictor.set_image(sample.filepath)
    masks, scores, _ = predictor.predict(point_coords=np.array([[0.5 * width, 0.5 * height],
                                                                [0.05 * width, 0.05 * height]]),
                                         point_labels=np.array([1, 0]), multimask_output=False)
    assert det.label == "bag" and iou(full, masks[0]) > 0.999


def test_apply_model_wrong_prompt_type(make_dataset, photos, checkpoint):
    dataset = make_dataset([photos["dog.jpg"]])
    dataset.set_values("cls", [fol.Classification(label="dog")])
    with pytest.raises(samkit.PromptError, match="holds Classification"):
        dataset.apply_model(SamModel(model=checkpoint), "x", prompt_field="cls", skip_failures=False)


def test_wrong_checkpoint_fails_at_construction(tmp_path):
    """Loaded when built (as FiftyOne's zoo models are): apply_model, which skips failing samples
    by default, never starts with a model that cannot load."""
    with pytest.raises(samkit.SamkitError, match="no checkpoint file"):
        SamModel(model=str(tmp_path / "nope.pt"))


def test_confidence_is_the_predicted_iou_clamped():
    assert confidence_of(0.73) == pytest.approx(0.73)
    assert confidence_of(1.04) == 1.0 and confidence_of(-0.02) == 0.0


def test_apply_model_bad_prompts_warn_and_keep_the_good_masks(make_dataset, photos, checkpoint, caplog):
    """With apply_model there is no error field: an unusable prompt is named in a warning (with
    the sample), the sample's other prompts still get their masks."""
    dataset = make_dataset([photos["truck.jpg"]], boxes=True)
    sample = dataset.first()
    sample["kp"] = fol.Keypoints(keypoints=[
        fol.Keypoint(label="truck", points=[[0.5, 0.45]]),
        fol.Keypoint(label="wheel", points=[[0.3, 0.7], [0.1, 0.1]], sam_labels=[1]),
    ])
    sample.gt.detections.append(fol.Detection(label="flat", bounding_box=[0.2, 0.2, 0.3, 0.0]))
    sample.save()
    model = SamModel(model=checkpoint)
    with caplog.at_level("WARNING", logger="samkit.fiftyone.model"):
        dataset.apply_model(model, "kp_sam", prompt_field="kp", skip_failures=False)
        dataset.apply_model(model, "gt_sam", prompt_field="gt", skip_failures=False)
    sample = dataset.first()
    assert [d.label for d in sample.kp_sam.detections] == ["truck"]
    assert [d.label for d in sample.gt_sam.detections] == ["truck"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "samkit.fiftyone.model"]
    wheel, flat = sample.kp.keypoints[1], sample.gt.detections[1]
    assert any(f"sample {sample.id}: 1 prompt in 'kp' got no mask: keypoint {wheel.id} ('wheel') has 2 points "
               "but 1 values in its 'sam_labels' attribute" in w for w in warnings), warnings
    assert any(f"sample {sample.id}: 1 prompt in 'gt' got no mask: detection {flat.id} ('flat') has a box of "
               "zero size" in w for w in warnings), warnings
