"""The FiftyOne plugin takes a SAM 2.1 name with no change of its own: SamModel(model="sam2.1_t.pt")
loads the SAM 2.1 Hiera-T (its official file in the cache: the seeded random one of
tests/sam2_files.py) and FiftyOne's apply_model gives the masks samkit.Predictor gives."""

from __future__ import annotations

import shutil

import numpy as np

import samkit
from samkit.fiftyone import SamModel
from samkit.models import MODEL_CACHE

from fo_checks import check_tight, image_size, iou


def test_apply_model_with_a_sam2_1_name(make_dataset, photos, sam2_tiny_checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(sam2_tiny_checkpoint, cache / "sam2.1_hiera_tiny.pt")
    monkeypatch.setenv("SAMKIT_HOME", str(cache))
    dataset = make_dataset([photos["dogs.jpg"]], boxes=True)
    MODEL_CACHE.clear()
    loads = MODEL_CACHE.loads
    try:
        model = SamModel(model="sam2.1_t.pt")
        dataset.apply_model(model, "boxes_sam", prompt_field="gt", skip_failures=False)
        loaded = samkit.get_model("sam2.1_hiera_tiny", device="cpu")
        assert loaded.arch == "sam2.1_hiera_tiny" and MODEL_CACHE.loads == loads + 1  # the model SamModel loaded
    finally:
        MODEL_CACHE.clear()
    sample = dataset.first()
    width, height = image_size(sample.filepath)
    predictor = samkit.Predictor(loaded)
    predictor.set_image(sample.filepath)
    assert len(sample.boxes_sam.detections) == len(sample.gt.detections) >= 1
    for det, prompt in zip(sample.boxes_sam.detections, sample.gt.detections):
        x, y, w, h = prompt.bounding_box
        masks, scores, _ = predictor.predict(box=np.array([x * width, y * height, (x + w) * width, (y + h) * height]),
                                             multimask_output=False)
        assert iou(check_tight(det, width, height), masks[0]) > 0.999
        assert abs(det["predicted_iou"] - float(scores[0])) < 1e-4
