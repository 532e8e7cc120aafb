"""Polygon output: Label Studio polygons are one ring each, so a part with holes comes back as
one "keyhole" ring (outside, a zero-width cut, the hole, back) that fills to the mask with its
holes empty; parts over the limit are dropped largest-last and said so."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from ls_helpers import CONFIG_ALL, holes, iou, near_boundary, polygon_mask, small_parts

from samkit import mask_utils
from samkit.label_studio.label_config import parse_label_config
from samkit.label_studio.regions import polygon_regions

POLY = parse_label_config(CONFIG_ALL).control("poly")


def winding_fill(regions: list[dict]) -> np.ndarray:
    """Pixel centres inside the polygons by the non-zero winding rule (an HTML canvas' fill, which
    Label Studio's editor draws with); polygon_mask rasterises with OpenCV's even-odd scan lines."""
    h, w = regions[0]["original_height"], regions[0]["original_width"]
    yy, xx = np.mgrid[:h, :w] + 0.5
    inside = np.zeros((h, w), bool)
    for r in regions:
        pts = np.array(r["value"]["points"], dtype=np.float64) / 100 * [w, h]
        wind = np.zeros((h, w), int)
        for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0)):
            side = (x1 - x0) * (yy - y0) - (xx - x0) * (y1 - y0)
            wind += (((y0 <= yy) & (y1 > yy) & (side > 0)).astype(int)
                     - ((y1 <= yy) & (y0 > yy) & (side < 0)).astype(int))
        inside |= wind != 0
    return inside


def shapes() -> dict[str, np.ndarray]:
    out = {}
    m = np.zeros((60, 80), bool)
    m[5:55, 10:70] = True
    m[20:40, 30:50] = False
    out["square with a hole"] = m
    m = np.zeros((60, 80), bool)
    cv2.circle(m.view(np.uint8), (40, 30), 27, 1, -1)
    cv2.circle(m.view(np.uint8), (30, 22), 7, 0, -1)
    cv2.rectangle(m.view(np.uint8), (38, 30), (56, 44), 0, -1)
    cv2.rectangle(m.view(np.uint8), (42, 33), (52, 41), 1, -1)  # an island inside the second hole
    m[28:31, 15:18] = False  # a hole of 9 pixels: under min_area, filled
    out["disc with two holes and an island"] = m
    m = np.zeros((40, 50), bool)
    m[:, 5:45] = True  # touches the top and bottom edges
    m[2:8, 10:20] = m[10:30, 12:16] = m[12:16, 20:40] = False  # holes above each other
    m[8, 20] = False  # touches the first hole diagonally only: still a separate hole
    out["holes stacked under each other"] = m
    return out


@pytest.mark.parametrize("name", list(shapes()))
def test_polygon_with_holes_fills_back_to_the_mask(name):
    mask = shapes()[name]
    big, small = holes(mask, 25)
    assert big.any()
    parts = cv2.connectedComponents((mask | small).astype(np.uint8), connectivity=8)[0] - 1
    for tolerance in (0.0, 1.0):
        regions = polygon_regions(mask, POLY, "Object", 0.9, tolerance=tolerance, min_area=25)
        assert len(regions) == parts  # one region per part: its holes are inside it
        for rule, filled in (("even-odd", polygon_mask(regions)), ("non-zero", winding_fill(regions))):
            # the holes stay empty (up to the pixels along their outline) ...
            assert not (filled & big & ~near_boundary(mask)).any(), f"{name}, {rule}: a hole was filled"
            # ... and everything else comes back, up to boundary pixels and the holes too small to keep
            wrong = (filled ^ mask) & ~small
            assert not (wrong & ~near_boundary(mask)).any(), f"{name}, {rule}, tolerance {tolerance}"
            if tolerance == 0 and rule == "even-odd":  # (OpenCV fills the outline's own pixels too)
                assert not wrong.any(), f"{name}: not exact without simplification"


def test_random_masks_with_holes_fill_back():
    rng = np.random.default_rng(7)
    for _ in range(40):
        h, w = rng.integers(40, 120, 2)
        noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), rng.uniform(1.5, 4))
        mask = noise > np.quantile(noise, rng.uniform(0.2, 0.5))
        big, small = holes(mask, 25)
        regions = polygon_regions(mask, POLY, None, None, tolerance=0.0, min_area=25, max_polygons=1000)
        filled = polygon_mask(regions) if regions else np.zeros_like(mask)
        assert not (filled & big).any()
        # (parts whose outline encloses less than min_area are left out, as ever)
        assert not ((filled ^ mask) & ~small & ~small_parts(mask, 25)).any()


def test_masks_without_holes_keep_their_outlines():
    """A mask without holes, or only with holes under min_area, gives the outer outlines as before."""
    for name, mask in shapes().items():
        big, small = holes(mask, 25)
        for m in (mask | big | small, mask | big):
            regions = polygon_regions(m, POLY, None, None, tolerance=1.0, min_area=25)
            h, w = m.shape
            expected = [p for p in mask_utils.mask_to_polygons(m, min_area=25, tolerance=1.0) if len(p) >= 3]
            expected.sort(key=lambda p: -cv2.contourArea(p.astype(np.float32)))
            assert [r["value"]["points"] for r in regions] == [
                [[round(float(x), 4), round(float(y), 4)] for x, y in np.stack(
                    [(p[:, 0] + 0.5) / w * 100, (p[:, 1] + 0.5) / h * 100], axis=1).clip(0, 100)]
                for p in expected], name


def test_parts_over_the_limit_are_dropped_smallest_first_with_a_warning(caplog):
    sizes = list(range(2, 27))  # 25 squares of different sizes
    mask = np.zeros((200, 400), bool)
    for i, s in enumerate(sizes):
        r, c = divmod(i, 5)
        mask[r * 40 + 2:r * 40 + 2 + s, c * 80 + 2:c * 80 + 2 + s] = True
    with caplog.at_level(logging.WARNING, logger="samkit.label_studio"):
        regions = polygon_regions(mask, POLY, "Object", 0.9, tolerance=0.0, min_area=0, max_polygons=20)
    assert len(regions) == 20
    kept = polygon_mask(regions)
    for i, s in enumerate(sizes):  # the 20 largest squares are there, the 5 smallest not
        r, c = divmod(i, 5)
        assert kept[r * 40 + 2 + s // 2, c * 80 + 2 + s // 2] == (s > 6), s
    dropped_px = sum((s - 1) ** 2 for s in sizes[:5])  # outlines through pixel centres
    msgs = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert any("25 polygon parts" in m and "kept the largest 20, dropped 5" in m and f"({dropped_px} px" in m
               and "SAMKIT_LS_MAX_POLYGONS" in m for m in msgs), msgs


def ragged_mask() -> np.ndarray:
    """A 600 x 900 blob with ~1,500 holes and a fringe of 1-3 px bumps: a random-weight SAM mask
    looks like this, and its keyhole outline at 1 px tolerance has ~20,000 points."""
    rng = np.random.default_rng(3)
    noise = cv2.GaussianBlur(rng.random((600, 900)).astype(np.float32), (0, 0), 1.2)
    mask = np.zeros((600, 900), bool)
    cv2.ellipse(mask.view(np.uint8), (450, 300), (400, 250), 0, 0, 360, 1, -1)
    return mask & (noise > np.quantile(noise, 0.35))


def test_a_ragged_mask_is_simplified_under_the_point_limit_logged_at_debug_level(caplog):
    mask = ragged_mask()
    uncapped = polygon_regions(mask, POLY, None, None, tolerance=1.0, min_area=25, max_points=10**9)
    assert sum(len(r["value"]["points"]) for r in uncapped) > 10_000  # what Label Studio got before
    with caplog.at_level(logging.DEBUG, logger="samkit.label_studio"):
        regions = polygon_regions(mask, POLY, None, None, tolerance=1.0, min_area=25, max_points=2000)
    assert 3 <= sum(len(r["value"]["points"]) for r in regions) <= 2000
    # still the object: the simplified polygons cover the blob's extent and most of the mask
    # (its small holes and fringe are what the coarser tolerance drops)
    outline = np.zeros_like(mask)
    cv2.ellipse(outline.view(np.uint8), (450, 300), (400, 250), 0, 0, 360, 1, -1)
    filled = polygon_mask(regions)
    assert iou(filled, outline) > 0.75 and (filled & mask).sum() > 0.8 * mask.sum()
    msgs = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.DEBUG]
    assert any("holes under" in m and "simplified at" in m and "SAMKIT_LS_MAX_POLYGON_POINTS" in m for m in msgs), msgs
    # every click on a ragged mask meets the limit: not a warning per click in the backend's log
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]


def test_a_mask_under_the_point_limit_is_not_simplified_further(caplog):
    """The limit only ever coarsens a mask that needs it: a clean shape is exactly as before."""
    for name, mask in shapes().items():
        with caplog.at_level(logging.WARNING, logger="samkit.label_studio"):
            limited = polygon_regions(mask, POLY, None, None, tolerance=1.0, min_area=25, max_points=2000)
        plain = polygon_regions(mask, POLY, None, None, tolerance=1.0, min_area=25, max_points=10**9)
        assert [r["value"] for r in limited] == [r["value"] for r in plain], name
    assert not [rec for rec in caplog.records if rec.levelno == logging.WARNING]


def test_over_the_point_limit_the_largest_holes_are_kept(caplog):
    """A mask with 240 square holes, 40 of them 20 px wide and the others 4-15 px: under a limit
    of 800 points only the largest 800 / POINTS_PER_HOLE (50) holes stay empty, all the wide
    ones among them; the smaller ones are filled."""
    from samkit.label_studio.regions import POINTS_PER_HOLE

    mask = np.ones((300, 520), bool)
    sides = []
    for i in range(240):
        r, c = divmod(i, 20)
        side = 20 if i % 6 == 0 else 4 + i % 12  # 4..15 px
        y, x = 10 + r * 24, 10 + c * 25
        mask[y:y + side, x:x + side] = False
        sides.append((side * side, y, x))
    with caplog.at_level(logging.DEBUG, logger="samkit.label_studio"):
        regions = polygon_regions(mask, POLY, None, None, tolerance=0.0, min_area=0, max_points=800)
    assert sum(len(r["value"]["points"]) for r in regions) <= 800
    filled = polygon_mask(regions)
    kept = 800 // POINTS_PER_HOLE
    threshold = sorted((area for area, _, _ in sides), reverse=True)[kept]  # holes of this area or less may go
    assert threshold < 400
    for area, y, x in sides:
        if area > threshold:
            assert not filled[y + 1, x + 1], (area, y, x)  # a large hole stays empty
        elif area < threshold:
            assert filled[y + 1, x + 1], (area, y, x)  # a small one is filled
    assert any("holes under" in rec.getMessage() for rec in caplog.records)
