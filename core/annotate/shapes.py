"""From SAM's masks to objects and shapes: overlap removal, small pieces and holes, what a mask
in several pieces becomes, and the outlines each format writes.

Masks are cut to their tight box as soon as SAM gives them (an object keeps its crop and where
it sits), so an image's objects cost their own pixels, not the image's size each.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..utils import mask_utils, outlines
from .records import Detections, ObjectMask, ShapeOptions

HUGE = np.iinfo(np.int64).max


def objects_from_masks(masks: np.ndarray, sam_scores: np.ndarray, dets: Detections, shape: ShapeOptions,
                       taken: np.ndarray | None) -> tuple[list[ObjectMask], int]:
    """(B, H, W) bool masks of the boxes `dets` (in that order) -> their objects and how many gave
    nothing (an empty mask, or nothing left after overlap and small-piece removal). `taken`: the
    (H, W) pixels earlier objects of this image own, updated here (None: overlaps allowed)."""
    boxes = mask_utils.batched_mask_to_box(torch.from_numpy(np.ascontiguousarray(masks))).numpy()
    objects: list[ObjectMask] = []
    empty = 0
    for i, mask in enumerate(masks):
        x0, y0, x1, y1 = (int(v) for v in boxes[i])
        crop = mask[y0:y1 + 1, x0:x1 + 1]
        if taken is not None:
            owned = taken[y0:y1 + 1, x0:x1 + 1]  # a view: updated below
            crop = clean(crop & ~owned, shape.min_area) & ~owned  # a filled hole takes no one's pixels
            owned |= crop
        else:
            crop = clean(crop, shape.min_area)
        pieces = split_pieces(crop, shape.pieces)
        if not pieces:
            empty += 1
            continue
        for piece, (dx, dy) in pieces:
            objects.append(ObjectMask(int(dets.class_ids[i]), float(dets.scores[i]), float(sam_scores[i]),
                                      tuple(float(v) for v in dets.boxes[i]), piece, (x0 + dx, y0 + dy)))
    return objects, empty


def clean(crop: np.ndarray, min_area: int) -> np.ndarray:
    """Drop pieces (8-connected, as outlines see them) of fewer than min_area pixels and fill holes
    (4-connected background not reaching past the crop) of fewer than min_area pixels."""
    if min_area <= 0 or not crop.any():
        return crop
    padded = np.pad(crop, 1).view(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(padded, connectivity=8)
    small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_area) + 1
    if small.size:
        padded = padded & ~np.isin(labels, small)
    count, labels, stats, _ = cv2.connectedComponentsWithStats((padded == 0).view(np.uint8), connectivity=4)
    outside = labels[0, 0]  # the padding ring: background connected to the outside
    holes = [k for k in range(1, count) if k != outside and stats[k, cv2.CC_STAT_AREA] < min_area]
    if holes:
        padded = padded | np.isin(labels, holes)
    return padded[1:-1, 1:-1].astype(bool)


def split_pieces(crop: np.ndarray, policy: str) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """The crop as [(piece crop, (dx, dy) offset in the crop)]: "merge" the whole mask as one,
    "largest" its largest piece, "split" every piece (largest first). Empty masks give []."""
    box = _tight(crop)
    if box is None:
        return []
    x0, y0, x1, y1 = box
    crop = crop[y0:y1, x0:x1]
    if policy == "merge":
        return [(np.ascontiguousarray(crop), (x0, y0))]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(crop.view(np.uint8), connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable") + 1
    if policy == "largest":
        order = order[:1]
    out = []
    for k in order:
        left, top, width, height = (int(v) for v in stats[k, :4])
        piece = labels[top:top + height, left:left + width] == k
        out.append((piece, (x0 + left, y0 + top)))
    return out


def _tight(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def fill_holes(crop: np.ndarray) -> np.ndarray:
    """The mask with every hole filled (background that does not reach past the crop's edge)."""
    parts = outlines.background_parts(crop)
    return crop | parts.is_hole[parts.labels]


def rings(obj: ObjectMask, shape: ShapeOptions) -> list[np.ndarray]:
    """The object's outlines in image pixels (pixel centres), one ring per piece, holes as
    keyhole cuts when shape.holes (else outer outlines only), largest first."""
    found = outlines.mask_outlines(obj.crop, tolerance=shape.tolerance, min_area=0,
                                   min_hole_area=1 if shape.holes else HUGE)
    found.sort(key=lambda r: -outlines.polygon_area(r))
    origin = np.asarray(obj.origin, dtype=np.float64)
    return [r + origin for r in found if len(r) >= 3]


def one_ring(obj: ObjectMask, shape: ShapeOptions) -> np.ndarray | None:
    """The object as one ring (its pieces joined by zero-width bridges), or None when the mask is
    too small to outline."""
    found = rings(obj, shape)
    if not found:
        return None
    return outlines.join_rings(found)
