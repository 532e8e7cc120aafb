"""Existing boxes to segmentation datasets, end to end on real data (Ultralytics'
yolo_bbox2segment case): OpenStreetMap building footprints of an aerial scene as YOLO box labels,
hand boxes on the shared photos as a COCO JSON; seeded-random MobileSAM. Each output is read
back and compared with the masks samkit.Predictor gives for the same boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

import samkit
from annotate_helpers import COCO_CATEGORIES, iou, photo_boxes, sam_masks, yolo_masks


def label_file_boxes(path, width, height):
    rows = np.array([line.split() for line in path.read_text().splitlines()], dtype=float)
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def test_footprint_box_labels_become_yolo_polygons_of_sams_masks(footprints, sam_predictor, tmp_path):
    root, _ = footprints
    out = tmp_path / "labels-segment"
    summary = samkit.auto_annotate(root / "images", root / "labels", sam_model=sam_predictor, output_dir=out,
                                   progress=False)
    assert (summary.done, summary.objects, summary.empty_images, summary.failed) == (2, 8, 1, [])
    assert (out / "street.txt").read_text() == ""  # no boxes: an empty label file (background)
    image = np.asarray(Image.open(root / "images" / "scene.png"))
    height, width = image.shape[:2]
    expected, _ = sam_masks(sam_predictor, image, label_file_boxes(root / "labels" / "scene.txt", width, height))
    classes, masks = yolo_masks(out / "scene.txt", width, height)
    assert classes == [0] * 8
    ious = [iou(got, want) for got, want in zip(masks, expected)]
    assert min(ious) >= 0.9, ious
    assert (out / "classes.txt").read_text() == "building\n"
    assert '0: "building"' in (out / "data.yaml").read_text()
    # Ultralytics' coordinates: normalised to [0, 1]
    values = np.array((out / "scene.txt").read_text().split(), dtype=float)
    assert values.min() >= 0.0 and values.max() <= 1.0


@pytest.fixture(scope="module")
def coco_rle_run(photos, sam_predictor, tmp_path_factory):
    images, boxes = photos
    out = tmp_path_factory.mktemp("coco-rle")
    summary = samkit.auto_annotate(images, boxes, sam_model=sam_predictor, output_dir=out, format="coco",
                                   progress=False)
    return summary, out / "annotations.json"


def test_coco_boxes_become_a_coco_file_pycocotools_reads_with_sams_masks(coco_rle_run, photos, sam_predictor):
    summary, path = coco_rle_run
    images, _ = photos
    assert summary.outputs == [path] and summary.objects == 5 and summary.failed == []
    coco = COCO(str(path))
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {c["id"]: c["name"]
                                                                            for c in COCO_CATEGORIES}
    by_name = {img["file_name"]: img for img in coco.loadImgs(coco.getImgIds())}
    assert sorted(by_name) == ["bus.jpg", "dog.jpg", "dogs.jpg"]
    for name, img in by_name.items():
        boxes, categories = photo_boxes(name)
        image = samkit.load_image(images / name)
        assert (img["height"], img["width"]) == image.shape[:2]
        expected, scores = sam_masks(sam_predictor, image, boxes)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert [a["category_id"] for a in anns] == categories  # the COCO ids, kept
        for ann, want, score in zip(anns, expected, scores):
            got = coco.annToMask(ann).astype(bool)
            assert np.array_equal(got, want)  # RLE: exactly SAM's mask
            assert ann["area"] == int(want.sum())
            assert ann["score"] == 1.0 and ann["sam_score"] == pytest.approx(float(score), abs=1e-5)
            x, y, w, h = ann["bbox"]
            rows, cols = np.flatnonzero(want.any(axis=1)), np.flatnonzero(want.any(axis=0))
            assert [x, y, w, h] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
    # also usable as detection results (what an evaluation would load)
    results = coco.loadRes(json.loads(path.read_text())["annotations"])
    assert len(results.getAnnIds()) == 5


def test_coco_polygons_rasterise_back_to_sams_masks(photos, sam_predictor, tmp_path):
    images, boxes = photos
    summary = samkit.auto_annotate(images, boxes, sam_model=sam_predictor, output_dir=tmp_path, format="coco",
                                   mask_format="polygons", progress=False)
    coco = COCO(str(summary.outputs[0]))
    for img in coco.loadImgs(coco.getImgIds()):
        expected, _ = sam_masks(sam_predictor, samkit.load_image(images / img["file_name"]),
                                photo_boxes(img["file_name"])[0])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert all(isinstance(a["segmentation"], list) and a["segmentation"] for a in anns)
        for ann, want in zip(anns, expected):
            rle = coco_mask.merge(coco_mask.frPyObjects(ann["segmentation"], img["height"], img["width"]))
            # pycocotools draws a polygon through pixel centres without about half of its edge pixels:
            # on these random-weight masks (ragged, dozens of pieces) that costs up to ~12% of IoU
            # (RLE, the default, is exact: see above)
            assert iou(coco_mask.decode(rle).astype(bool), want) >= 0.85


def test_class_filter_by_name_and_non_overlapping_masks(photos, sam_predictor, tmp_path):
    images, boxes = photos
    summary = samkit.auto_annotate(images, boxes, sam_model=sam_predictor, output_dir=tmp_path, classes=["dog"],
                                   non_overlapping=True, format="coco", progress=False)
    assert summary.objects == 3 and summary.empty_images == 1  # bus.jpg: its bus and person filtered out
    coco = COCO(str(summary.outputs[0]))
    by_name = {img["file_name"]: img["id"] for img in coco.loadImgs(coco.getImgIds())}
    assert coco.getAnnIds(imgIds=[by_name["bus.jpg"]]) == []  # still listed: an image without objects
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[by_name["dogs.jpg"]]))
    assert [a["category_id"] for a in anns] == [18, 18]
    got = [coco.annToMask(a).astype(bool) for a in anns]
    expected, _ = sam_masks(sam_predictor, samkit.load_image(images / "dogs.jpg"), photo_boxes("dogs.jpg")[0])
    assert np.logical_and(expected[0], expected[1]).sum() > 1000  # random weights: SAM's masks do overlap
    # the first box (equal scores: the earlier one) keeps the shared pixels, the second loses them
    assert np.array_equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1] & ~expected[0])
