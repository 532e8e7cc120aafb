"""Text prompts in FiftyOne: the "SAM: segment by text" operator (immediate and delegated to a
worker) and segment_prompts' text option, on a real FiftyOne database.

The detector is the small OWLv2 with seeded random weights (tests/text_models.py: the real
transformers classes and PIL processor; no pretrained weights exist here), SAM the seeded
MobileSAM. What is checked is the wiring: the detector's boxes, in image pixels, are SAM's
prompts, and the masks come out as Detections labelled with the phrases."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import text_models

import fiftyone.operators as foo
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError, ExecutionRunState

import samkit
from samkit.annotate.detectors import DetectOptions, finalize, load_detector

from fo_checks import check_tight, image_size, iou
from test_fiftyone_operators import run_worker

TEXT_OPERATOR = "@samkit/fiftyone/segment_text"
PROMPTS = "@samkit/fiftyone/segment_prompts"
TEXT = "dog. tree."
CONF = 0.52  # the seeded OWLv2's scores spread around 0.5: a few boxes per image


@pytest.fixture(scope="module")
def owlv2(tmp_path_factory):
    return str(text_models.owlv2(tmp_path_factory.mktemp("text-models") / "owlv2-test"))


def expected(path, owlv2, checkpoint):
    """What the detector and SAM give on this image, computed here: (boxes XYXY px, labels, masks)."""
    image = samkit.load_image(path)
    height, width = image.shape[:2]
    detector = load_detector(owlv2, TEXT, DetectOptions(conf=CONF))
    dets, _ = finalize(detector.detect(image, None), detector, width, height)
    predictor = samkit.Predictor(samkit.get_model(checkpoint, "cpu"))
    predictor.set_image(image)
    masks, _, _ = predictor.predict_batch(boxes=dets.boxes, multimask_output=False)
    keep = masks[:, 0].any(axis=(1, 2))
    return dets.boxes[keep], [detector.names[int(c)] for c in dets.class_ids[keep]], masks[keep, 0]


def check_field(sample, field, want):
    boxes, labels, masks = want
    width, height = image_size(sample.filepath)
    dets = sample[field].detections
    assert len(dets) == len(labels) >= 2
    for det, box, label, mask in zip(dets, boxes, labels, masks):
        assert det.label == label and label in ("dog", "tree")
        x, y, w, h = det["detector_box"]
        np.testing.assert_allclose([x * width, y * height, (x + w) * width, (y + h) * height], box, atol=1e-6)
        assert det.confidence > CONF
        full = check_tight(det, width, height)
        assert iou(full, mask) > 0.999 and det["area"] == int(full.sum())


def test_segment_by_text_and_segment_prompts_text_option(make_dataset, photos, checkpoint, owlv2):
    dataset = make_dataset([photos["dog.jpg"]])
    params = dict(text=TEXT, det_model=owlv2, box_threshold=CONF, model=checkpoint, output_field="by_text")
    summary = foo.execute_operator(TEXT_OPERATOR, ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 1 and summary["failed"] == 0 and summary["masks"] >= 2
    want = expected(photos["dog.jpg"], owlv2, checkpoint)
    sample = dataset.first()
    check_field(sample, "by_text", want)

    # segment_prompts with text instead of a prompt field: the same objects
    params = dict(text=TEXT, det_model=owlv2, box_threshold=CONF, model=checkpoint, output_field="via_prompts")
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 1 and summary["failed"] == 0
    sample.reload()
    check_field(sample, "via_prompts", want)

    # a re-run skips the done sample
    again = foo.execute_operator(TEXT_OPERATOR, ctx={"dataset": dataset, "params": {**params,
                                                                                     "output_field": "by_text"}})
    assert again.result["processed"] == 0 and again.result["skipped"] == 1


def test_segment_by_text_delegated_to_a_worker(make_dataset, photos, checkpoint, owlv2, fiftyone_env):
    dataset = make_dataset([photos["dog.jpg"]])
    params = dict(text=TEXT, det_model=owlv2, box_threshold=CONF, output_field="by_text", model="")
    queued = foo.execute_operator(TEXT_OPERATOR, ctx={"dataset": dataset, "params": params,
                                                      "request_delegation": True})
    assert queued.delegated and not dataset.has_field("by_text")
    run_worker(dataset, fiftyone_env(SAMKIT_CHECKPOINT=checkpoint))
    doc = DelegatedOperationService().get(queued.result["id"])
    assert doc.run_state == ExecutionRunState.COMPLETED, doc.result
    assert doc.result.result["processed"] == 1 and doc.result.result["masks"] >= 2
    dataset.reload()
    check_field(dataset.first(), "by_text", expected(photos["dog.jpg"], owlv2, checkpoint))


def test_offline_detector_id_and_bad_text_are_one_line(make_dataset, photos, checkpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dataset = make_dataset([photos["dog.jpg"]])
    with pytest.raises(Exception) as err:
        foo.execute_operator(TEXT_OPERATOR, ctx={"dataset": dataset, "params": {"text": "dog", "model": checkpoint}})
    line = str(err.value).strip().splitlines()[-1]
    assert "IDEA-Research/grounding-dino-tiny" in line and "--det-model path/to/grounding-dino-tiny" in line
    assert not dataset.has_field("sam_text")
    from samkit.fiftyone.runner import segment_prompts

    import fiftyone.core.fields as fof
    import fiftyone.core.labels as fol

    dataset.add_sample_field("gt", fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)
    with pytest.raises(samkit.PromptError, match="a prompt field or text, not both"):
        segment_prompts(dataset, "gt", text="dog")


def refused(operator, dataset, params: dict) -> str:
    """The one-line validation error of an immediate run, which must not have started."""
    with pytest.raises(ExecutionError) as info:
        foo.execute_operator(operator, ctx={"dataset": dataset, "params": params})
    message = str(info.value)
    assert message.startswith("Validation error. Path: det_model. Reason: ") and "\n" not in message, message
    assert not dataset.has_field(params["output_field"])  # nothing ran, no field made
    return message


def test_a_text_detector_that_cannot_load_is_refused_before_the_run(make_dataset, photos, checkpoint, owlv2,
                                                                      tmp_path, monkeypatch, fiftyone_env):
    """A wrong detector setting is an invalid input of segment_text and of segment_prompts' text
    option (the App shows it at the field), found by samkit.annotate's check, not by the run once
    it loads the detector: a folder that does not exist, an id that cannot be downloaded offline,
    transformers not importable. A queued run is checked by the worker before it runs."""
    dataset = make_dataset([photos["dog.jpg"]])
    missing = tmp_path / "owlv2-missing"
    for operator in (TEXT_OPERATOR, PROMPTS):
        params = dict(text=TEXT, det_model=str(missing), model=checkpoint, output_field="by_text")
        assert refused(operator, dataset, params).endswith(f"detector not found: {missing}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the default detector is not in this machine's cache
    message = refused(TEXT_OPERATOR, dataset, dict(text=TEXT, model=checkpoint, output_field="by_text"))
    assert "IDEA-Research/grounding-dino-tiny" in message and "--det-model path/to/grounding-dino-tiny" in message

    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
        params = dict(text=TEXT, det_model=owlv2, model=checkpoint, output_field="by_text")
        for operator in (TEXT_OPERATOR, PROMPTS):
            assert refused(operator, dataset, params).endswith("needs transformers: pip install 'samkit[text]'")

    # queued: the requesting process does not judge the worker's files; the worker refuses the
    # run before it starts, with the same reason
    params = dict(text=TEXT, det_model=str(missing), model=checkpoint, output_field="by_text")
    queued = foo.execute_operator(TEXT_OPERATOR, ctx={"dataset": dataset, "params": params,
                                                      "request_delegation": True})
    assert queued.delegated
    run_worker(dataset, fiftyone_env(SAMKIT_CHECKPOINT=checkpoint))
    doc = DelegatedOperationService().get(queued.result["id"])
    assert doc.run_state == ExecutionRunState.FAILED
    assert "Path: det_model" in str(doc.result.error) and f"detector not found: {missing}" in str(doc.result.error)
    dataset.reload()
    assert not dataset.has_field("by_text")


def test_operator_is_listed_and_registered():
    from pathlib import Path

    import yaml

    from samkit.fiftyone.operators import OPERATORS

    manifest = yaml.safe_load((Path(samkit.fiftyone.__file__).parent / "fiftyone.yml").read_text())
    assert "segment_text" in manifest["operators"]
    assert "segment_text" in [op().config.name for op in OPERATORS]
    assert foo.get_operator(TEXT_OPERATOR).config.allow_delegated_execution
