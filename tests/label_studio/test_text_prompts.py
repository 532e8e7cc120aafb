"""Text prompts in Label Studio: a `<TextArea>` in the labeling config (as Label Studio's own
GroundingSAM example has) answered with a mask for every object the text detector finds, and
batch pre-labelling that looks for the project's label names, through a real Label Studio 1.23.2.

The detector is the small OWLv2 with seeded random weights (tests/text_models.py: the real
transformers classes and PIL processor; no pretrained weights exist here), SAM the seeded
MobileSAM. What is checked is the wiring: the detector's boxes, in image pixels, are SAM's
prompts, and the masks come back as brush regions labelled with the project's labels."""

from __future__ import annotations

import pytest
import text_models
from ls_helpers import brush_mask, iou

import samkit
from samkit.annotate.detectors import DetectOptions, finalize, load_detector
from samkit.label_studio.label_config import parse_label_config

CONF = 0.52  # the seeded OWLv2's scores spread around 0.5: a few boxes per image
CONFIG_TEXT = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="Dog" background="#FF0000"/>
    <Label value="Tree" background="#00FF00"/>
    <Label value="Background" background="#0000FF"/>
  </BrushLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="Dog" background="#FFAA00"/>
  </RectangleLabels>
  <TextArea name="prompt" toName="image" editable="true" rows="2" maxSubmissions="1" showSubmitButton="true"/>
</View>"""


@pytest.fixture(scope="module")
def owlv2(tmp_path_factory):
    return str(text_models.owlv2(tmp_path_factory.mktemp("text-models") / "owlv2-test"))


def expected(sam_model, path, owlv2, text):
    """(masks, phrases) the detector and SAM give on this image for `text`, computed here."""
    image = samkit.load_image(path)
    height, width = image.shape[:2]
    detector = load_detector(owlv2, text, DetectOptions(conf=CONF))
    dets, _ = finalize(detector.detect(image, None), detector, width, height)
    predictor = samkit.Predictor(sam_model)
    predictor.set_image(image)
    masks, _, _ = predictor.predict_batch(boxes=dets.boxes, multimask_output=False)
    keep = masks[:, 0].any(axis=(1, 2))
    return masks[keep, 0], [detector.names[int(c)] for c in dets.class_ids[keep]]


def check_regions(result, want_masks, want_phrases):
    brushes = [r for r in result if r["type"] == "brushlabels"]
    assert len(brushes) == len(want_phrases) >= 2
    for region, mask, phrase in zip(brushes, want_masks, want_phrases):
        assert region["value"]["brushlabels"] == [phrase.capitalize()]  # the project's own label
        assert region["from_name"] == "brush" and region["to_name"] == "image"
        assert iou(brush_mask(region), mask) > 0.99


def test_label_config_with_a_text_area():
    config = parse_label_config(CONFIG_TEXT)
    assert config.text_areas == ("prompt",) and config.text_prompts
    assert config.label_names() == ["Dog", "Tree"]  # what batch pre-labelling looks for
    assert not parse_label_config(CONFIG_TEXT.replace('<TextArea name="prompt" toName="image"', "<Text")
                                  .replace("showSubmitButton", "value")).text_prompts


def test_text_area_prompt_and_batch_through_label_studio(label_studio, serve_backend, sam_model, owlv2, images_dir):
    ls = label_studio
    url, backend = serve_backend(text_model=owlv2, box_threshold=CONF)
    pid = ls.create_project("samkit text prompts", config=CONFIG_TEXT, show_collab_predictions=False)
    tid = ls.upload(pid, images_dir / "dog.jpg")
    ml = ls.connect(pid, url)

    # the annotator types "dog. tree" into the TextArea and submits it (Auto-Annotation on)
    textarea = {"from_name": "prompt", "to_name": "image", "type": "textarea", "origin": "manual",
                "original_width": 800, "original_height": 534, "value": {"text": ["dog. tree"]}}
    out = ls.ok("POST", f"/api/ml/{ml}/interactive-annotating", json={"task": tid, "context": {"result": [textarea]}})
    assert "errors" not in out, out
    masks, phrases = expected(sam_model, images_dir / "dog.jpg", owlv2, "dog. tree")
    check_regions(out["data"]["result"], masks, phrases)
    assert set(phrases) == {"dog", "tree"}

    # batch pre-labelling (Retrieve Predictions): the project's label names are the text
    t2 = ls.upload(pid, images_dir / "dogs.jpg")
    out = ls.ok("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                json={"selectedItems": {"all": False, "included": [t2]}})
    assert out.get("processed_items") == 1, out
    [prediction] = ls.ok("GET", "/api/predictions/", params={"task": t2})
    masks, phrases = expected(sam_model, images_dir / "dogs.jpg", owlv2, "dog. tree")
    check_regions(prediction["result"], masks, phrases)


def test_text_detector_that_cannot_load_is_one_line(make_client, image_server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client, _ = make_client()  # no text model set: GroundingDINO tiny, not downloadable here
    textarea = {"from_name": "prompt", "to_name": "image", "type": "textarea", "value": {"text": ["dog"]}}
    body = {"tasks": [{"id": 1, "data": {"image": f"{image_server.url}/public/dog.jpg"}}], "label_config": CONFIG_TEXT,
            "params": {"context": {"result": [textarea]}}}
    resp = client.post("/predict", json=body)
    message = resp.json()["error"]
    assert resp.status_code == 500 and "\n" not in message
    assert "IDEA-Research/grounding-dino-tiny" in message and "path/to/grounding-dino-tiny" in message
    bad = dict(body, params={"context": {"result": [dict(textarea, value={"text": [" . "]})]}})
    resp = client.post("/predict", json=bad)
    assert resp.status_code == 422 and "names no class" in resp.json()["error"]
