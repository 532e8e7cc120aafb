"""Mask outlines as polygon rings: one ring per connected part, holes kept as "keyhole" cuts, and
several parts joined into one ring. Shared by the Label Studio adapter (its polygon regions) and
auto-annotation (YOLO, COCO and Label Studio polygons).

Every ring is a (K, 2) float array of XY pixel-centre coordinates (OpenCV contours). Rings that
hold holes or joined parts use zero-width cuts: a cut is walked down and back up along the same
line, so it adds nothing to the filled area under either fill rule (even-odd or non-zero), and a
ring drawn with cv2.fillPoly or a canvas covers the mask's pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from . import mask_utils


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
        found.sort(key=lambda p: -polygon_area(p))
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


def polygon_area(poly) -> float:
    """The area a ring encloses (shoelace formula; absolute value)."""
    p = np.asarray(poly, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def join_rings(rings: list[np.ndarray]) -> np.ndarray:
    """Several rings (a mask's parts) as one ring, for formats that hold one polygon per object
    (a YOLO segmentation line). The parts are chained from the largest, each to the remaining
    part whose centre is nearest to the last one's, by zero-width bridges between the two parts'
    closest vertices: the ring walks each part once and each bridge there and back (as
    Ultralytics joins a mask's parts). Returns the one ring; a single ring comes back unchanged."""
    rings = [np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in rings if len(r)]
    if not rings:
        return np.zeros((0, 2))
    if len(rings) == 1:
        return rings[0]
    centres = np.stack([r.mean(axis=0) for r in rings])
    areas = np.array([polygon_area(r) for r in rings])
    left = np.ones(len(rings), dtype=bool)
    chain = [int(np.argmax(areas))]
    left[chain[0]] = False
    for _ in range(len(rings) - 1):  # greedy nearest centre: O(parts^2) on centres, not on vertices
        distance = ((centres - centres[chain[-1]]) ** 2).sum(axis=1)
        distance[~left] = np.inf
        chain.append(int(np.argmin(distance)))
        left[chain[-1]] = False
    exits: list[int] = []  # vertex of chain[i] where the bridge to chain[i + 1] leaves
    entries: list[int] = [0]  # vertex of chain[i] where the bridge from chain[i - 1] arrives
    for a, b in zip(chain[:-1], chain[1:]):
        i, j, _ = _closest_vertices(rings[a], rings[b])
        exits.append(i)
        entries.append(j)
    pieces = [rings[chain[0]][[exits[0]]]]  # start on the first part where its bridge leaves
    # forward: each middle part from where its bridge arrives round to where the next leaves
    for i in range(1, len(chain) - 1):
        pieces.append(_arc(rings[chain[i]], entries[i], exits[i]))
    last = rings[chain[-1]]
    pieces.append(np.concatenate([_arc(last, entries[-1], entries[-1] - 1), last[[entries[-1]]]]))
    # back: the rest of each middle part, from where the next bridge left round to where it arrived
    for i in range(len(chain) - 2, 0, -1):
        ring = rings[chain[i]]
        if exits[i] == entries[i]:  # arrived and left at one vertex: the whole part is still to walk
            pieces.append(np.concatenate([_arc(ring, exits[i], exits[i] - 1), ring[[exits[i]]]]))
        else:
            pieces.append(_arc(ring, exits[i], entries[i]))
    first = rings[chain[0]]
    pieces.append(_arc(first, exits[0], exits[0] - 1))  # the first part all round, back to its start
    joined = np.concatenate(pieces)
    return joined[(joined != np.roll(joined, 1, axis=0)).any(axis=1)]  # no vertex twice in a row


def _arc(ring: np.ndarray, start: int, end: int) -> np.ndarray:
    """The ring's vertices from `start` forward to `end`, both included, wrapping round."""
    n = len(ring)
    start, end = start % n, end % n
    index = np.arange(start, start + (end - start) % n + 1) % n
    return ring[index]


def _closest_vertices(a: np.ndarray, b: np.ndarray, budget: int = 4_000_000) -> tuple[int, int, float]:
    """(index in a, index in b, distance) of the closest pair of vertices. Rings with more
    vertex pairs than `budget` are searched on every k-th vertex of the longer one, then
    refined around the pair found."""
    step = max(1, int(np.ceil(len(a) * len(b) / budget)))
    long_is_a = len(a) >= len(b)
    sub_a = np.arange(0, len(a), step if long_is_a else 1)
    sub_b = np.arange(0, len(b), 1 if long_is_a else step)
    best = _pair_search(a, b, sub_a, sub_b)
    if step > 1:  # refine: the full longer ring near the coarse pair's vertex on the shorter one
        i, j = best[:2]
        if long_is_a:
            best = min(best, _pair_search(a, b, np.arange(len(a)), np.array([j])), key=lambda t: t[2])
        else:
            best = min(best, _pair_search(a, b, np.array([i]), np.arange(len(b))), key=lambda t: t[2])
    return best


def _pair_search(a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> tuple[int, int, float]:
    best = (0, 0, np.inf)
    rows = max(1, 1_000_000 // max(len(ib), 1))  # at most a million distances at a time
    for start in range(0, len(ia), rows):
        chunk = ia[start:start + rows]
        d = ((a[chunk, None, :] - b[None, ib, :]) ** 2).sum(axis=2)
        k = int(np.argmin(d))
        r, c = divmod(k, len(ib))
        if d[r, c] < best[2]:
            best = (int(chunk[r]), int(ib[c]), float(d[r, c]))
    return best[0], best[1], float(np.sqrt(best[2]))
