"""From masks to objects and outlines (model-agnostic: hand-drawn masks stand in for SAM's, so
what must come out is known): pieces, small pieces and holes, overlaps, one ring per object."""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from samkit.utils import outlines
from samkit.annotate.formats.coco import CocoEncoder
from samkit.annotate.formats.yolo import YoloEncoder
from samkit.annotate.records import Detections, ImageInfo, ShapeOptions
from samkit.annotate.shapes import objects_from_masks, rings

H, W = 120, 160


def canvas() -> np.ndarray:
    return np.zeros((H, W), np.uint8)


def two_pieces_with_a_hole() -> np.ndarray:
    """A 40x40 square with a 10x10 hole, a 12x12 square apart from it, and a 2x2 speck."""
    m = canvas()
    m[20:60, 20:60] = 1
    m[35:45, 35:45] = 0
    m[80:92, 100:112] = 1
    m[5:7, 150:152] = 1
    return m.astype(bool)


def dets(n: int, scores=None) -> Detections:
    boxes = np.tile([[0, 0, W, H]], (n, 1))
    return Detections(boxes, np.ones(n) if scores is None else np.asarray(scores), np.arange(n) + 3, {3: "a", 4: "b"})


def run(masks, shape: ShapeOptions, scores=None):
    masks = np.stack(masks)
    taken = np.zeros((H, W), bool) if shape.non_overlapping else None
    return objects_from_masks(masks, np.full(len(masks), 0.5), dets(len(masks), scores), shape, taken)


def fill(ring) -> np.ndarray:
    out = canvas()
    cv2.fillPoly(out, [np.round(ring).astype(np.int32)], 1)
    return out.astype(bool)


def test_merge_keeps_every_piece_in_one_object_and_one_yolo_ring():
    mask = two_pieces_with_a_hole()
    objects, empty = run([mask], ShapeOptions(pieces="merge", tolerance=0))
    assert empty == 0 and len(objects) == 1
    obj = objects[0]
    assert obj.origin == (20, 5) and np.array_equal(obj.full(H, W), mask)  # tight crop, nothing lost
    assert (obj.class_id, obj.score, obj.sam_score) == (3, 1.0, 0.5)
    line = YoloEncoder(ShapeOptions(tolerance=0))(ImageInfo(None, "x.png", W, H), objects, {})
    assert line.count("\n") == 1 and line.startswith("3 ")
    ring = np.array(line.split()[1:], dtype=float).reshape(-1, 2) * [W, H]
    drawn = fill(ring)
    assert drawn[mask].all()  # every piece is inside the one ring
    assert not drawn[38:42, 38:42].any()  # the hole stays open (keyhole cut)
    assert (drawn & ~mask).sum() < 150  # the bridges: lines of pixels, no area


def test_largest_and_split():
    mask = two_pieces_with_a_hole()
    largest, _ = run([mask], ShapeOptions(pieces="largest"))
    assert len(largest) == 1 and largest[0].origin == (20, 20) and largest[0].area == 40 * 40 - 100
    split, _ = run([mask], ShapeOptions(pieces="split"))
    assert [o.origin for o in split] == [(20, 20), (100, 80), (150, 5)]  # largest first
    assert [o.area for o in split] == [1500, 144, 4]
    assert np.array_equal(np.logical_or.reduce([o.full(H, W) for o in split]), mask)
    assert {o.class_id for o in split} == {3}


def test_min_area_drops_specks_and_fills_small_holes():
    mask = two_pieces_with_a_hole()
    (obj,), _ = run([mask], ShapeOptions(min_area=5))
    full = obj.full(H, W)
    assert not full[5:7, 150:152].any()  # the 4-pixel speck is gone
    assert not full[35:45, 35:45].any()  # the 100-pixel hole stays
    (obj,), _ = run([mask], ShapeOptions(min_area=150))
    full = obj.full(H, W)
    assert full[35:45, 35:45].all()  # filled
    assert not full[80:92, 100:112].any()  # the 144-pixel square is dropped
    objects, empty = run([mask], ShapeOptions(min_area=5000))
    assert objects == [] and empty == 1  # nothing left: no object, counted as empty


def test_non_overlapping_the_higher_score_keeps_shared_pixels():
    a, b = canvas().astype(bool), canvas().astype(bool)
    a[10:50, 10:50] = True
    b[30:70, 30:70] = True
    # boxes come in score order (the pipeline sorts them); b first here, as if it scored higher
    objects, _ = run([b, a], ShapeOptions(non_overlapping=True), scores=[0.9, 0.8])
    got_b, got_a = (o.full(H, W) for o in objects)
    assert np.array_equal(got_b, b) and np.array_equal(got_a, a & ~b)
    # with min_area, a hole is measured on the object's own mask: pixels another object took
    # count as background (here they join the two halves of the ring's hole into one, kept)
    ring = canvas().astype(bool)
    ring[10:40, 10:40] = True
    ring[20:30, 20:30] = False
    bar = canvas().astype(bool)
    bar[23:25, 15:35] = True
    objects, _ = run([bar, ring], ShapeOptions(non_overlapping=True, min_area=35), scores=[0.9, 0.8])
    got_bar, got_ring = (o.full(H, W) for o in objects)
    assert np.array_equal(got_bar, bar) and np.array_equal(got_ring, ring & ~bar)


def test_holes_option_for_polygons():
    mask = two_pieces_with_a_hole()
    (obj,), _ = run([mask], ShapeOptions(min_area=5))
    with_holes = rings(obj, ShapeOptions(holes=True, tolerance=0))
    without = rings(obj, ShapeOptions(holes=False, tolerance=0))
    assert not fill(with_holes[0])[38:42, 38:42].any()
    assert fill(without[0])[38:42, 38:42].all()


def test_coco_polygons_keep_holes_for_pycocotools():
    mask = two_pieces_with_a_hole()
    objects, _ = run([mask], ShapeOptions(min_area=5))
    (ann,) = CocoEncoder(ShapeOptions(mask_format="polygons", tolerance=0))(ImageInfo(None, "x.png", W, H), objects,
                                                                            {3: "a"})
    assert len(ann["segmentation"]) == 2  # one ring per piece, the hole inside the first as a keyhole
    decoded = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(ann["segmentation"], H, W))).astype(bool)
    assert not decoded[37:43, 37:43].any()
    inside = mask.copy()
    inside[5:7, 150:152] = False
    assert (decoded & inside).sum() / (decoded | inside).sum() > 0.9
    assert ann["area"] == int(inside.sum()) and ann["bbox"] == [20.0, 20.0, 92.0, 72.0]


def test_join_rings_covers_every_part():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = canvas()
        for _ in range(rng.integers(2, 7)):
            cv2.circle(m, (int(rng.integers(10, 150)), int(rng.integers(10, 110))), int(rng.integers(6, 20)), 1, -1)
        cv2.circle(m, (int(rng.integers(10, 150)), int(rng.integers(10, 110))), 3, 0, -1)
        parts = outlines.mask_outlines(m, tolerance=0)
        joined = fill(outlines.join_rings(parts))
        separate = np.logical_or.reduce([fill(r) for r in parts])
        assert not (separate & ~joined).any()
