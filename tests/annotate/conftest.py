"""Fixtures of the auto-annotation tests: one seeded MobileSAM predictor for the session (its
embedding cache keeps each image's encoder run to one), and real inputs with box labels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import samkit
from annotate_helpers import footprint_boxes, photo_dataset, write_yolo_boxes


@pytest.fixture(scope="session")
def sam_predictor(mobile_sam_checkpoint) -> samkit.Predictor:
    return samkit.Predictor(samkit.load_model(mobile_sam_checkpoint, device="cpu"), cache_size=32)


@pytest.fixture(scope="session")
def footprints(geo_dir, tmp_path_factory):
    """images/scene.png (the Kampala aerial scene) with YOLO box labels of its 8 largest
    OpenStreetMap building footprints in labels/ (class 0 'building', classes.txt), and
    images/street.png (a corner of the scene) with no label file. Returns (root, boxes)."""
    root = tmp_path_factory.mktemp("footprints")
    rgb, boxes = footprint_boxes(geo_dir)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    Image.fromarray(rgb).save(root / "images" / "scene.png")
    Image.fromarray(np.ascontiguousarray(rgb[:200, :300])).save(root / "images" / "street.png")
    write_yolo_boxes(root / "labels" / "scene.txt", boxes, rgb.shape[1], rgb.shape[0])
    (root / "labels" / "classes.txt").write_text("building\n")
    return root, boxes


@pytest.fixture(scope="session")
def photos(images_dir, tmp_path_factory):
    """(images folder with dog.jpg, dogs.jpg, bus.jpg; COCO JSON of hand boxes around their dogs,
    bus and person)."""
    return photo_dataset(images_dir, tmp_path_factory.mktemp("photos"))
