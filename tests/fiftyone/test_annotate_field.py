"""samkit.auto_annotate(format="fiftyone") on a real FiftyOne database: the fiftyone format comes
from the adapter through the `samkit.annotate_formats` entry point (core imports no FiftyOne);
each image becomes a sample, its objects Detections whose box-relative masks are SAM's masks;
a re-run overwrites the field, skip_existing leaves done samples alone."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest

import samkit
from fo_checks import check_box_relative_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "annotate"))
from annotate_helpers import photo_boxes, photo_dataset, sam_masks  # noqa: E402


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return samkit.Predictor(samkit.load_model(checkpoint, device="cpu"), cache_size=4)


@pytest.fixture
def dataset_name():
    name = f"samkit-annotate-{uuid.uuid4().hex[:8]}"
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def test_auto_annotate_into_a_dataset_field(images_dir, tmp_path, predictor, dataset_name):
    from samkit.annotate.formats import format_names

    assert "fiftyone" in format_names()
    images, boxes = photo_dataset(images_dir, tmp_path, ("dog.jpg", "dogs.jpg"))
    existing = fo.Dataset(dataset_name)
    existing.persistent = True
    existing.add_sample(fo.Sample(filepath=str(images / "dog.jpg"), note="mine"))  # a sample it must reuse
    options = {"dataset": dataset_name, "field": "sam"}
    summary = samkit.auto_annotate(images, boxes, sam_model=predictor, format="fiftyone", format_options=options,
                                   progress=False)
    assert summary.objects == 3 and "FiftyOne dataset" in summary.line()
    dataset = fo.load_dataset(dataset_name)
    assert len(dataset) == 2 and dataset[str(images / "dog.jpg")]["note"] == "mine"
    for name in ("dog.jpg", "dogs.jpg"):
        sample = dataset[str(images / name)]
        image = samkit.load_image(images / name)
        height, width = image.shape[:2]
        expected, scores = sam_masks(predictor, image, photo_boxes(name)[0])
        detections = sample["sam"].detections
        assert [d.label for d in detections] == ["dog"] * len(expected)
        for det, want, score in zip(detections, expected, scores):
            assert np.array_equal(check_box_relative_mask(det, width, height), want)
            assert det.confidence == 1.0 and det["sam_score"] == pytest.approx(float(score), abs=1e-5)
            assert det["class_id"] == 18 and det["area"] == int(want.sum())
    # a re-run overwrites the field (no duplicated detections)
    samkit.auto_annotate(images, boxes, sam_model=predictor, format="fiftyone", format_options=options,
                         progress=False)
    dataset.reload()
    assert sum(len(s["sam"].detections) for s in dataset) == 3 and len(dataset) == 2
    # skip_existing: samples with the field are left as they are; a new image is added
    shutil.copy(images_dir / "bus.jpg", images / "bus.jpg")
    again = samkit.auto_annotate(images, boxes, sam_model=predictor, format="fiftyone", format_options=options,
                                 skip_existing=True, progress=False)
    assert again.skipped_existing == 2 and again.done == 1 and len(fo.load_dataset(dataset_name)) == 3


def test_fiftyone_format_needs_a_dataset(images_dir, tmp_path, predictor):
    images, boxes = photo_dataset(images_dir, tmp_path, ("dog.jpg",))
    with pytest.raises(samkit.SamkitError, match="format fiftyone needs a dataset"):
        samkit.auto_annotate(images, boxes, sam_model=predictor, format="fiftyone", progress=False)
