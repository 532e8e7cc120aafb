"""Masks -> Label Studio result regions (brush RLE and/or polygons in percent coordinates)."""

from __future__ import annotations

import logging
import secrets
import string
from typing import NamedTuple

import numpy as np

from .label_config import Control

log = logging.getLogger("samkit.label_studio")

_ID_CHARS = string.ascii_letters + string.digits


def region_id() -> str:
    """A 10-character id like the ones Label Studio's editor makes."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(10))


# Label Studio's brush RLE (the bit format of label_studio_sdk.converter.brush.encode_rle): a
# 53-bit header (value count in 32 bits, word size - 1 in 5, the four run-length field widths - 1
# in 4 each), then per run of equal bytes a token: flag 1, the width's index in 2 bits, run
# length - 1 in that width, the byte in 8 bits; runs longer than 256 always take the 16-bit field,
# in pieces of at most 65536. (The format's flag-0 token for a run of one byte never occurs here:
# every pixel is 4 equal RGBA bytes.) Then 8 - (bits % 8) zero bits (a whole byte when already
# aligned), read as bytes.
BRUSH_WIDTHS = (3, 4, 8, 16)
BRUSH_HEADER_BITS = 32 + 5 + 4 * len(BRUSH_WIDTHS)
BRUSH_LONGEST = 1 << BRUSH_WIDTHS[-1]


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of an HxW boolean mask: the mask as 0/255, repeated into RGBA,
    row-major. Byte for byte what label_studio_sdk's mask2rle returns (tests/label_studio), but
    computed on whole arrays: the SDK's encoder builds a string bit by bit per run and took 8 ms
    for one smooth 1800x1200 mask and 140 ms for a ragged one."""
    pixels = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    starts = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    starts = np.concatenate(([0], starts))
    lengths = np.diff(np.append(starts, pixels.size)) * 4  # RGBA: every pixel is 4 equal bytes
    values = np.where(pixels[starts], 255, 0).astype(np.int64)
    return _brush_tokens_to_bytes(4 * pixels.size, lengths, values)


def _brush_tokens_to_bytes(count: int, lengths: np.ndarray, values: np.ndarray) -> list[int]:
    """The brush RLE bytes of `count` values given as runs (lengths >= 2, byte values)."""
    pieces = (lengths - 1) // BRUSH_LONGEST + 1  # a run over 65536 splits
    values_each = np.repeat(values, pieces)
    lengths_each = np.full(values_each.size, BRUSH_LONGEST)  # every piece but a run's last is full
    lengths_each[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * BRUSH_LONGEST
    long_run = np.repeat(lengths > 256, pieces)
    index = np.select([long_run, lengths_each <= 8, lengths_each <= 16], [3, 0, 1], default=2)
    width = np.asarray(BRUSH_WIDTHS)[index]
    nbits = 1 + 2 + width + 8
    codes = (1 << (nbits - 1)) | (index << (width + 8)) | ((lengths_each - 1) << 8) | values_each
    header = (count << 21) | ((8 - 1) << 16)
    for i, w in enumerate(BRUSH_WIDTHS):
        header |= (w - 1) << (12 - 4 * i)
    # The header, in two codes of at most 32 bits, then the tokens, one after another from the
    # most significant bit of 32-bit words; a code that crosses a word boundary is split.
    codes = np.concatenate(([header >> 32, header & 0xFFFFFFFF], codes))
    nbits = np.concatenate(([BRUSH_HEADER_BITS - 32, 32], nbits))
    ends = np.cumsum(nbits)
    starts = ends - nbits
    total_bits = int(ends[-1]) + 8 - int(ends[-1]) % 8  # the zero padding
    word = starts // 32
    free = 32 - starts % 32  # bits left in the first word
    overflow = np.maximum(nbits - free, 0)  # bits that go into the next word
    first = (codes >> overflow) << np.maximum(free - nbits, 0)
    second = (codes & ((1 << overflow) - 1)) << (32 - overflow)
    # the codes' bits never overlap, so summing them into the words is or-ing them (float64 sums
    # of integers below 2**32 are exact)
    num_words = -(-total_bits // 32)
    words = np.bincount(word, weights=first.astype(np.float64), minlength=num_words)
    spill = overflow > 0
    words += np.bincount(word[spill] + 1, weights=second[spill].astype(np.float64), minlength=num_words)[:num_words]
    return list(words.astype(">u4").tobytes()[: total_bits // 8])


def brush_region(mask: np.ndarray, control: Control, label: str | None, score: float | None) -> dict:
    h, w = mask.shape
    value: dict = {"format": "rle", "rle": brush_rle(mask)}
    if label is not None:
        value["brushlabels"] = [label]
    return _region(control, w, h, value, score)


def polygon_regions(mask: np.ndarray, control: Control, label: str | None, score: float | None,
                    tolerance: float = 1.0, min_area: int = 0, max_polygons: int = 20,
                    max_points: int = 2000) -> list[dict]:
    """One polygon region per connected part of the mask (largest first, at most `max_polygons`),
    points in percent of the image size as Label Studio stores them. Their points together are
    at most about `max_points`: a ragged mask is simplified more coarsely (see capped_outlines)."""
    h, w = mask.shape
    polygons, used, min_hole = capped_outlines(mask, tolerance, min_area, max_polygons, max_points)
    if used != tolerance or min_hole > max(min_area, 1):
        count = sum(len(p) for p in polygons[:max_polygons])
        simplified = f", simplified at {used:g} px instead of {tolerance:g}" if used != tolerance else ""
        # debug, not warning: a click on a ragged mask meets the limit every time (it is how the
        # answer stays small), and a warning per click fills the log (issue 23)
        log.debug("a mask's outline needed more than %d points: %d kept (holes under %d px filled%s); raise "
                  "SAMKIT_LS_MAX_POLYGON_POINTS to keep more detail", max_points, count, min_hole, simplified)
    if len(polygons) > max_polygons:
        # never silently: a speckled mask would otherwise lose parts without anyone knowing
        kept = sum(_area(p) for p in polygons[:max_polygons])
        dropped = sum(_area(p) for p in polygons[max_polygons:])
        log.warning("a mask has %d polygon parts: kept the largest %d, dropped %d (%.0f px, %.1f%% of the "
                    "polygon area); raise SAMKIT_LS_MAX_POLYGONS to keep more", len(polygons), max_polygons,
                    len(polygons) - max_polygons, dropped, 100.0 * dropped / max(kept + dropped, 1e-9))
    regions = []
    for poly in polygons[:max_polygons]:
        pts = np.asarray(poly, dtype=np.float64) + 0.5  # outlines follow pixel centres
        pct = np.stack([pts[:, 0] / w * 100.0, pts[:, 1] / h * 100.0], axis=1).clip(0.0, 100.0)
        value: dict = {"points": [[round(float(x), 4), round(float(y), 4)] for x, y in pct], "closed": True}
        if label is not None:
            value["polygonlabels"] = [label]
        regions.append(_region(control, w, h, value, score))
    return regions


def _hole_area(tolerance: float, min_area: int) -> int:
    """Holes smaller than this are filled at this simplification tolerance: one narrower than the
    tolerance would be drawn as a sliver anyway."""
    return max(min_area, int(tolerance * tolerance)) if tolerance > 1 else min_area


# Points a hole costs at least in a keyhole ring: its outline (4 or more) and the cut's two ends
# on each side; used to keep no more holes than a point limit can hold.
POINTS_PER_HOLE = 16


class BackgroundParts(NamedTuple):
    """The mask's background components (4-connected, as OpenCV's contours see them): labels
    (H, W), area per label, and which labels are holes (off the image border)."""

    labels: np.ndarray
    areas: np.ndarray
    is_hole: np.ndarray


def background_parts(mask: np.ndarray) -> BackgroundParts:
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask == 0).view(np.uint8), connectivity=4)
    is_hole = np.ones(count, bool)
    is_hole[0] = False  # label 0: the mask's own pixels
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        is_hole[edge] = False
    return BackgroundParts(labels, stats[:, cv2.CC_STAT_AREA], is_hole)


def capped_outlines(mask: np.ndarray, tolerance: float, min_area: int, max_polygons: int,
                    max_points: int) -> tuple[list[np.ndarray], float, int]:
    """mask_outlines, largest part first, with at most `max_points` points in the largest
    `max_polygons` parts together. Label Studio's editor slows to a crawl on polygons of tens of
    thousands of points, which a ragged mask with many holes gives (and tracing thousands of
    holes takes ~0.1 s). So only the largest max_points / POINTS_PER_HOLE holes are kept (the
    smaller ones filled); if the points still exceed the limit, the tolerance doubles until
    they fit (holes under its square filled too), then steps back by sqrt(2) if that fits too.
    Returns the outlines, the tolerance used and the smallest hole area kept."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    background = background_parts(mask)
    min_hole = max(min_area, 1)
    hole_areas = np.sort(background.areas[background.is_hole & (background.areas >= min_hole)])[::-1]
    most_holes = max_points // POINTS_PER_HOLE
    if len(hole_areas) > most_holes:
        min_hole = int(hole_areas[most_holes]) + 1 if most_holes else int(hole_areas[0]) + 1

    def outlines(at: float) -> tuple[list[np.ndarray], bool]:
        found = mask_outlines(mask, tolerance=at, min_area=min_area,
                              min_hole_area=max(min_hole, _hole_area(at, min_area)), background=background)
        found.sort(key=lambda p: -_area(p))
        return found, sum(len(p) for p in found[:max_polygons]) <= max_points

    used, (polygons, fits) = tolerance, outlines(tolerance)
    limit = max(mask.shape)  # beyond the image's size, simplifying cannot remove more
    while not fits and used < limit:
        used = max(2.0 * used, 1.0)
        polygons, fits = outlines(used)
    if fits and used != tolerance and used / 2 > tolerance:
        # a doubling can land far under the limit: one step back keeps more detail
        between = used / 2 ** 0.5
        closer, closer_fits = outlines(between)
        if closer_fits:
            polygons, used = closer, between
    return polygons, used, max(min_hole, _hole_area(used, min_area))


def mask_outlines(mask: np.ndarray, tolerance: float = 1.0, min_area: int = 0,
                  min_hole_area: int | None = None, background: BackgroundParts | None = None) -> list[np.ndarray]:
    """One closed outline ((K, 2) pixel-centre XY) per connected part of the mask.

    A Label Studio polygon is a single ring, so a part with holes becomes one "keyhole" ring: it
    runs around the outside and, along a zero-width cut, around each hole and back. The holes
    wind the other way, so both even-odd and non-zero filling (Label Studio's canvas) leave them
    empty. Parts enclosing less than `min_area` pixels are dropped and holes of fewer than
    `min_hole_area` (default `min_area`) pixels filled; `tolerance` > 0 simplifies
    (Douglas-Peucker, pixels). `background`: background_parts(mask), if already computed. A
    mask without such holes gives exactly samkit.mask_utils.mask_to_polygons' outlines.
    """
    import cv2

    from samkit import mask_utils

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    labels, areas, is_hole = background if background is not None else background_parts(mask)
    big = is_hole & (areas >= max(min_area if min_hole_area is None else min_hole_area, 1))
    if not big.any():  # outer outlines only: every hole is filled
        return [p for p in mask_utils.mask_to_polygons(mask, min_area=min_area, tolerance=tolerance) if len(p) >= 3]
    small = is_hole & ~big
    if small.any():
        mask = mask | small[labels].view(np.uint8)
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    contours = [c.reshape(-1, 2) for c in contours]
    parent = hierarchy[0][:, 3]
    holes_of: dict[int, list[int]] = {}
    for i in np.flatnonzero(parent >= 0):
        holes_of.setdefault(int(parent[i]), []).append(int(i))
    polygons = []
    for i in np.flatnonzero(parent < 0):
        if int(i) in holes_of:
            ring, ends = _keyhole(contours, int(i), holes_of[int(i)], mask, labels, big)
            if tolerance > 0:
                ring = _simplify_keyhole(ring, ends, tolerance)
            ring = ring[(ring != np.roll(ring, 1, axis=0)).any(axis=1)]  # a point twice in a row (a cut of length 0)
        else:  # as mask_to_polygons does it
            ring = contours[i].reshape(-1, 1, 2)
            if tolerance > 0:
                ring = cv2.approxPolyDP(ring, tolerance, True)
            if len(ring) < 3 or cv2.contourArea(ring) < min_area:
                continue
            ring = ring.reshape(-1, 2)
        if len(ring) >= 3:
            polygons.append(ring.astype(np.float64))
    return polygons


def _keyhole(contours: list[np.ndarray], outer: int, holes: list[int], mask: np.ndarray, labels: np.ndarray,
             is_hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The outer contour `outer` with its hole contours spliced in, and which of its points are
    the ends of a cut. Each hole is joined by a vertical cut from its first pixel up through the
    part to the nearest other boundary (the outside, or a hole that starts higher up: the cuts
    form a tree and cross no boundary)."""
    import cv2

    # OpenCV starts a hole's contour (CHAIN_APPROX_NONE) at the pixel left of the hole's first
    # pixel in raster order; nothing in that column above it belongs to the hole.
    ring_of_label: dict[int, int] = {}
    entry: dict[int, tuple[int, int]] = {}
    for j in holes:
        x, y = (int(v) for v in contours[j][0])
        label = int(labels[y, x + 1]) if x + 1 < labels.shape[1] else 0
        if not is_hole[label]:  # not where OpenCV puts it: the hole most of its border touches
            label = _adjacent_hole(contours[j], labels, is_hole)
        ring_of_label[label] = j
        entry[j] = (x, y)
    # holes wind against the outside (OpenCV's do; made sure of, keeping each hole's entry first)
    rings = {outer: contours[outer]}
    sign = np.sign(cv2.contourArea(contours[outer], oriented=True))
    for j in holes:
        ring = contours[j]
        same_way = np.sign(cv2.contourArea(ring, oriented=True)) == sign
        rings[j] = np.concatenate([ring[:1], ring[:0:-1]]) if same_way else ring
    attached: dict[int, list[tuple[int, int]]] = {}  # ring -> (vertex index, hole joined there)
    index: dict[tuple[int, int], int] = {}  # the outer contour's points
    for j in holes:
        x, y = entry[j]
        background = np.flatnonzero(mask[:y, x] == 0)
        target, top = outer, (x, 0)
        if background.size:
            top = (x, int(background[-1]) + 1)
            label = int(labels[background[-1], x])
            target = ring_of_label.get(label, outer) if is_hole[label] else outer
            if target != outer and entry[target][1] >= y:  # (only if a hole was misread: keep it a tree)
                target = outer
        if target == outer:  # where most cuts end: look up by point
            if not index:
                for k, point in enumerate(map(tuple, rings[outer].tolist())):
                    index.setdefault(point, k)
            k = index.get(top)
        else:
            at = np.flatnonzero((rings[target] == top).all(axis=1))
            k = int(at[0]) if at.size else None
        if k is None:  # not on that outline (never seen): its nearest vertex
            k = int(np.argmin(np.abs(rings[target] - np.array(top)).sum(axis=1)))
        attached.setdefault(target, []).append((k, j))
    for joints in attached.values():
        joints.sort()
    # walk the tree of outlines: at a joint go down the cut, around the hole, and back up
    pieces: list[np.ndarray] = []
    ends: list[np.ndarray] = []

    def add(points: np.ndarray, first: bool = False, last: bool = False) -> None:
        flags = np.zeros(len(points), bool)
        if len(points):
            flags[0], flags[-1] = flags[0] or first, flags[-1] or last
        pieces.append(points)
        ends.append(flags)

    stack = [[outer, 0, 0, None]]  # ring, next joint, next vertex, the vertex to return to
    while stack:
        frame = stack[-1]
        ring_id, n, start, back = frame
        ring, joints = rings[ring_id], attached.get(ring_id, [])
        if n < len(joints):
            k, child = joints[n]
            add(ring[start:k + 1], first=start == 0 and back is not None, last=True)
            frame[1], frame[2] = n + 1, k + 1
            stack.append([child, 0, 0, ring[k:k + 1]])
            continue
        add(ring[start:], first=start == 0 and back is not None)
        if back is not None:  # round the hole to its entry, back up the cut
            add(ring[:1], first=True)
            add(back, first=True)
        stack.pop()
    return np.concatenate(pieces), np.concatenate(ends)


def _simplify_keyhole(ring: np.ndarray, ends: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a keyhole ring, keeping the cuts' ends: simplifying the ring as a whole
    could bend a cut's two sides apart and open a gap along it."""
    joints = np.flatnonzero(ends)
    ring = np.concatenate([ring[joints[0]:], ring[:joints[0] + 1]])  # from a joint round to it
    joints = np.append(joints - joints[0], len(ring) - 1)
    return np.concatenate([_simplify_open(ring[a:b + 1], tolerance)[:-1] for a, b in zip(joints[:-1], joints[1:])])


def _simplify_open(path: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on an open path, both ends kept (a path that ends where it starts is
    split at its farthest point first)."""
    import cv2

    if len(path) <= 2:
        return path
    if (path[0] == path[-1]).all():
        far = int(np.argmax(((path - path[0]) ** 2).sum(axis=1)))
        if far == 0:
            return path[[0, -1]]
        return np.concatenate([_simplify_open(path[:far + 1], tolerance)[:-1], _simplify_open(path[far:], tolerance)])
    return cv2.approxPolyDP(path.reshape(-1, 1, 2).astype(np.int32), tolerance, False).reshape(-1, 2)


def _adjacent_hole(contour: np.ndarray, labels: np.ndarray, is_hole: np.ndarray) -> int:
    h, w = labels.shape
    found = []
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        x, y = contour[:, 0] + dx, contour[:, 1] + dy
        ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        found.append(labels[y[ok], x[ok]])
    found = np.concatenate(found)
    found = found[is_hole[found]]
    return int(np.bincount(found).argmax()) if found.size else 0


def _area(poly) -> float:
    p = np.asarray(poly, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _region(control: Control, width: int, height: int, value: dict, score: float | None) -> dict:
    region = {
        "id": region_id(),
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.result_type,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": value,
        "readonly": False,
    }
    if score is not None:
        region["score"] = unit_score(score)
    return region


def unit_score(score: float) -> float:
    """A Label Studio score (in [0, 1], 4 places) from SAM's predicted IoU."""
    from samkit.utils.mask_utils import score_of_predicted_iou

    return round(score_of_predicted_iou(score), 4)


def mean_score(scores) -> float:
    """A prediction's overall score: the mean of its regions' scores (0 without regions)."""
    return round(float(np.mean([unit_score(s) for s in scores])), 4) if len(scores) else 0.0


def mask_regions(mask: np.ndarray, outputs: list[Control], wanted_label: str | None, score: float | None,
                 polygon_tolerance: float = 1.0, min_area: int = 0, max_polygons: int = 20,
                 max_polygon_points: int = 2000) -> list[dict]:
    """The regions of one mask for every output tool (brush and/or polygon)."""
    regions: list[dict] = []
    if not mask.any():
        return regions
    for control in outputs:
        label = control.pick_label(wanted_label)
        if control.tag == "BrushLabels":
            regions.append(brush_region(mask, control, label, score))
        elif control.tag == "PolygonLabels":
            regions.extend(polygon_regions(mask, control, label, score, polygon_tolerance, min_area,
                                           max_polygons, max_polygon_points))
    return regions
