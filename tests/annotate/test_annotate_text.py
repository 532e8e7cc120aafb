"""Text prompts: GroundingDINO and OWLv2 built from small configs with seeded random weights
through the real transformers classes and PIL processors, saved to a folder and loaded by path
(tests/annotate/text_models.py). What is checked is the wiring: the detector's boxes are the
ones transformers' own post-processing gives, in image pixels, and they reach SAM and come out
as labels of the phrases' classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import samkit
import text_models
from annotate_helpers import iou, sam_masks, yolo_masks
from samkit.annotate import AnnotateError
from samkit.annotate.detectors import DetectOptions, finalize, load_detector

NO_FILTER = DetectOptions(conf=0.5, iou=1.0, max_det=1000, text_threshold=0.0)  # iou 1: no NMS


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-models")
    return {"grounding_dino": text_models.grounding_dino(root / "grounding-dino-test"),
            "owlv2": text_models.owlv2(root / "owlv2-test")}


@pytest.fixture(scope="module")
def dog(images_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("text-data") / "images"
    data.mkdir()
    (data / "dog.jpg").write_bytes((images_dir / "dog.jpg").read_bytes())
    return data, samkit.load_image(data / "dog.jpg")


def by_score(boxes, scores, classes):
    order = np.argsort(-np.asarray(scores), kind="stable")
    return np.asarray(boxes)[order], np.asarray(scores)[order], np.asarray(classes)[order]


def test_grounding_dino_boxes_are_transformers_own(models, dog):
    from transformers import (AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil,
                              GroundingDinoProcessor)

    _, image = dog
    height, width = image.shape[:2]
    folder = models["grounding_dino"]
    detector = load_detector(str(folder), "dog. tree.", NO_FILTER)
    assert type(detector._processor.image_processor).__name__ == "GroundingDinoImageProcessorPil"
    assert detector.names == {0: "dog", 1: "tree"}
    got = detector.detect(image, None)
    # the reference: transformers' classes and post-processing, straight
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil.from_pretrained(folder),
                                       tokenizer=tokenizer)
    model = GroundingDinoForObjectDetection.from_pretrained(folder).eval()
    inputs = processor(images=Image.fromarray(image), text="dog. tree.", return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    ref = processor.post_process_grounded_object_detection(outputs, inputs["input_ids"], threshold=0.5,
                                                           text_threshold=0.0, target_sizes=[(height, width)])[0]
    probs = outputs.logits[0].sigmoid()
    kept = probs.max(dim=-1).values > 0.5
    ids = inputs["input_ids"][0].tolist()
    words = [ids.index(tokenizer.convert_tokens_to_ids(w)) for w in ("dog", "tree")]  # one token each here
    classes = probs[kept][:, words].argmax(dim=-1).numpy()
    boxes, scores, classes = by_score(ref["boxes"].numpy(), ref["scores"].numpy(), classes)
    assert len(got) == len(boxes) >= 3
    np.testing.assert_allclose(got.boxes, boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, scores, atol=1e-6)
    assert got.class_ids.tolist() == classes.tolist()


def test_owlv2_boxes_are_transformers_own_and_the_patch_cells(models, dog):
    from transformers import AutoTokenizer, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    _, image = dog
    height, width = image.shape[:2]
    folder = models["owlv2"]
    detector = load_detector(str(folder), ["dog", "tree"], NO_FILTER)
    assert type(detector._processor.image_processor).__name__ == "Owlv2ImageProcessorPil"
    got = detector.detect(image, None)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil.from_pretrained(folder),
                               tokenizer=AutoTokenizer.from_pretrained(folder))
    model = Owlv2ForObjectDetection.from_pretrained(folder).eval()
    inputs = processor(images=Image.fromarray(image), text=[["dog", "tree"]], return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    ref = processor.post_process_grounded_object_detection(outputs, threshold=0.5, target_sizes=[(height, width)])[0]
    boxes, scores, classes = by_score(ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy())
    assert len(got) == len(boxes) >= 3
    np.testing.assert_allclose(got.boxes, boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, scores, atol=1e-6)
    assert got.class_ids.tolist() == classes.tolist()
    # by hand: the image is padded to an 800x800 square, seen as 6x6 patches of side c = 800 / 6; the
    # box of patch (row i, column j) is c wide and high, centred where OWLv2's box bias puts it, at
    # ((j + 1) c, (i + 1) c) (transformers' compute_box_bias: arange(1, n + 1) / n)
    cell = max(height, width) / 6
    for x0, y0, x1, y1 in got.boxes:
        col, row = round(x0 / cell - 0.5), round(y0 / cell - 0.5)
        np.testing.assert_allclose([x0, y0, x1, y1], (np.array([col, row, col + 1, row + 1]) + 0.5) * cell, atol=0.5)


@pytest.mark.parametrize("family, text, conf", [("grounding_dino", "dog. tree.", 0.99), ("owlv2", "dog. tree.", 0.52)])
def test_text_boxes_reach_sam_and_come_out_as_labels(models, dog, sam_predictor, tmp_path, family, text, conf):
    data, image = dog
    height, width = image.shape[:2]
    summary = samkit.auto_annotate(data, str(models[family]), sam_model=sam_predictor, text=text, conf=conf,
                                   output_dir=tmp_path, progress=False)
    detector = load_detector(str(models[family]), text, DetectOptions(conf=conf))
    expected, _ = finalize(detector.detect(image, None), detector, width, height)
    assert summary.objects == len(expected) >= 2
    classes, masks = yolo_masks(tmp_path / "dog.txt", width, height)
    assert classes == expected.class_ids.tolist() and set(classes) <= {0, 1}
    want, _ = sam_masks(sam_predictor, image, expected.boxes)
    assert min(iou(a, b) for a, b in zip(masks, want)) >= 0.9
    assert (tmp_path / "classes.txt").read_text() == "dog\ntree\n"


def test_offline_model_id_is_one_line_naming_it_and_the_folder_route(dog, monkeypatch):
    data, _ = dog
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never download here, whatever the network
    with pytest.raises(AnnotateError) as err:
        samkit.auto_annotate(data, "IDEA-Research/grounding-dino-tiny", text="dog", progress=False)
    message = str(err.value)
    assert "\n" not in message and "IDEA-Research/grounding-dino-tiny" in message
    assert "--local-dir grounding-dino-tiny" in message and "--det-model path/to/grounding-dino-tiny" in message


def test_text_detector_problem_is_what_loading_says(models, tmp_path, monkeypatch):
    """text_detector_problem (the cheap check a form runs before a run) finds, without loading,
    what load_detector would fail with (in the same words for a missing folder, an id offline and
    transformers missing); None where loading works."""
    from samkit.annotate.detectors.text import text_detector_problem

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no pretrained detector is in this machine's cache
    for det_model in (str(tmp_path / "owlv2-missing"), "google/owlv2-base-patch16-ensemble", None):
        problem = text_detector_problem(det_model)
        with pytest.raises(AnnotateError) as err:
            load_detector(det_model, "dog", NO_FILTER)
        assert problem is not None and problem in str(err.value), det_model
    assert "not a GroundingDINO or OWLv2 model" in text_detector_problem(str(tmp_path))  # a folder of neither
    with pytest.raises(AnnotateError):
        load_detector(str(tmp_path), "dog", NO_FILTER)
    for folder in models.values():
        assert text_detector_problem(str(folder)) is None
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    problem = text_detector_problem(str(models["owlv2"]))
    with pytest.raises(AnnotateError) as err:
        load_detector(str(models["owlv2"]), "dog", NO_FILTER)
    assert problem == str(err.value) and "needs transformers" in problem


def test_text_segmenter_boxes_reach_sam_in_image_pixels(models, dog, sam_predictor):
    """samkit.annotate.text_segmenter (what the adapters run): each detected box, in image pixels,
    is SAM's prompt; the masks are SAM's for those boxes; labels are the phrases; the records
    (MaskGenerator's form) carry the same; a pickled copy (a Dask worker's) gives the same."""
    import pickle

    from samkit.annotate import text_segmenter

    _, image = dog
    height, width = image.shape[:2]
    segmenter = text_segmenter("dog. tree.", str(models["owlv2"]), sam_predictor, conf=0.52)
    detector = load_detector(str(models["owlv2"]), "dog. tree.", DetectOptions(conf=0.52))
    expected, _ = finalize(detector.detect(image, None), detector, width, height)
    found = segmenter.segment(image)
    assert len(found) == len(expected) >= 2
    np.testing.assert_allclose([f.det_box for f in found], expected.boxes)
    assert [f.label for f in found] == [["dog", "tree"][c] for c in expected.class_ids]
    want, scores = sam_masks(sam_predictor, image, expected.boxes)
    for f, m, s in zip(found, want, scores):
        assert iou(f.mask.mask, m) >= 0.99 and abs(f.mask.score - s) < 1e-4
    records = segmenter.generate(image)
    assert [r["label"] for r in records] == [f.label for f in found if not f.mask.empty]
    for r in records:
        x, y, w, h = r["bbox"]
        assert r["segmentation"][y : y + h, x : x + w].sum() == r["area"] == r["segmentation"].sum()
    copy = pickle.loads(pickle.dumps(segmenter))
    assert copy._predictor is None and copy.detector._model is None
    assert copy.fingerprint() == text_segmenter("dog. tree.", str(models["owlv2"]), copy.model, conf=0.52).fingerprint()
    again = copy.segment(image)
    assert [f.label for f in again] == [f.label for f in found]
    assert min(iou(a.mask.mask, b.mask.mask) for a, b in zip(again, found)) >= 0.99


def test_with_text_shares_the_loaded_network(models, dog):
    """What the Label Studio backend does per request: one loaded detector, new phrases each time."""
    _, image = dog
    detector = load_detector(str(models["owlv2"]), "dog", NO_FILTER)
    other = detector.with_text("tree. building")
    assert other._model is detector._model and other.names == {0: "tree", 1: "building"}
    assert detector.names == {0: "dog"}
    fresh = load_detector(str(models["owlv2"]), "tree. building", NO_FILTER)
    got, want = other.detect(image, None), fresh.detect(image, None)
    np.testing.assert_allclose(got.boxes, want.boxes)
    assert got.class_ids.tolist() == want.class_ids.tolist() and len(got) > 0
