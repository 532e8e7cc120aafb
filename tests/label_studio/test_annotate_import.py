"""samkit.auto_annotate's Label Studio output imported into a real Label Studio: the labeling
config it writes makes a project, its tasks.json (tasks with predictions, brush RLE or polygons)
imports, the images resolve through Label Studio's local-files storage, and the stored
predictions decode back to SAM's masks."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import samkit
from ls_helpers import brush_mask, iou, polygon_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "annotate"))
from annotate_helpers import photo_boxes, photo_dataset, sam_masks  # noqa: E402

NAMES = ("dog.jpg", "dogs.jpg")


@pytest.fixture(scope="module")
def annotate_inputs(images_dir, tmp_path_factory):
    return photo_dataset(images_dir, tmp_path_factory.mktemp("ls-annotate"), NAMES)


@pytest.fixture(scope="module")
def predictor(sam_model):
    return samkit.Predictor(sam_model, cache_size=4)


def run(inputs, predictor, out, mask_format):
    images, boxes = inputs
    # The test Label Studio serves ../shared/data as its local-files root, where the same photos lie in
    # images/: the tasks point there.
    return samkit.auto_annotate(images, boxes, sam_model=predictor, output_dir=out, format="labelstudio",
                                mask_format=mask_format, progress=False,
                                format_options={"url_prefix": "/data/local-files/?d=images/"})


def import_project(ls, out: Path, title: str, images: Path) -> tuple[int, list[dict]]:
    pid = ls.create_project(title, config=(out / "label_config.xml").read_text())
    # Label Studio serves /data/local-files/ only for a folder a project's Local Files storage names
    ls.ok("POST", "/api/storages/localfiles", json={"project": pid, "title": "photos", "path": str(images),
                                                    "use_blob_urls": True})
    ls.import_tasks(pid, json.loads((out / "tasks.json").read_text()))
    return pid, ls.tasks(pid)


@pytest.mark.parametrize("mask_format", ["rle", "polygons"])
def test_label_studio_imports_the_predictions(label_studio, annotate_inputs, predictor, tmp_path, mask_format,
                                             images_dir):
    ls = label_studio
    summary = run(annotate_inputs, predictor, tmp_path, mask_format)
    assert summary.objects == 3
    pid, tasks = import_project(ls, tmp_path, f"samkit auto-annotate {mask_format}", images_dir)
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=images/{n}" for n in NAMES]
    for task, name in zip(tasks, NAMES):
        served = ls.api("GET", task["data"]["image"])  # the image resolves through Label Studio
        assert served.status_code == 200 and served.content == (images_dir / name).read_bytes()
        (prediction,) = ls.ok("GET", "/api/predictions/", params={"task": task["id"]})
        assert prediction["model_version"] == "samkit-auto-annotate" and prediction["score"] == 1.0
        regions = prediction["result"]
        expected, _ = sam_masks(predictor, samkit.load_image(images_dir / name), photo_boxes(name)[0])
        kind = "brushlabels" if mask_format == "rle" else "polygonlabels"
        assert {r["type"] for r in regions} == {kind} and all(r["value"][kind] == ["dog"] for r in regions)
        if mask_format == "rle":
            assert len(regions) == len(expected)
            for region, want in zip(regions, expected):
                assert np.array_equal(brush_mask(region), want)  # Label Studio's brush RLE: exact
        else:  # polygons of at most 2000 points a mask (the editor's limit): these random-weight masks
            # are ragged, so simplified coarsely (as the adapter's own tests find: > 0.85)
            assert iou(polygon_mask(regions), np.logical_or.reduce(expected)) > 0.85


def test_label_config_names_the_classes(annotate_inputs, predictor, tmp_path):
    run(annotate_inputs, predictor, tmp_path, "rle")
    config = (tmp_path / "label_config.xml").read_text()
    assert '<BrushLabels name="label" toName="image">' in config and '<Label value="dog"/>' in config
    shutil.rmtree(tmp_path / ".samkit-annotate")
