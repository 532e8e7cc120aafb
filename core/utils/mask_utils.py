"""Mask conversions: binary masks <-> COCO RLE, boxes, areas, polygons, small-region clean-up."""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
import torch
from pycocotools import mask as coco_mask


def score_of_predicted_iou(predicted_iou: float) -> float:
    """SAM's predicted IoU as a score in [0, 1], where labelling tools keep scores and
    confidences: the prediction is a regression and can leave that range slightly."""
    return min(1.0, max(0.0, float(predicted_iou)))


def mask_to_rle(mask: np.ndarray) -> dict:
    """HxW binary mask -> COCO compressed RLE {"size": [h, w], "counts": str} (pycocotools format)."""
    return masks_to_rle(np.asarray(mask, dtype=bool)[None])[0]


def masks_to_rle(masks: np.ndarray | torch.Tensor) -> list[dict]:
    """(N, H, W) binary masks -> N COCO compressed RLEs, encoded by pycocotools in one call."""
    if isinstance(masks, torch.Tensor):
        # pycocotools wants each mask column-major: transpose to (N, W, H) and view as (H, W, N) Fortran.
        # (free when the masks are already column-major views)
        column_major = masks.transpose(1, 2).contiguous().cpu().numpy()
    else:
        column_major = np.ascontiguousarray(np.asarray(masks).transpose(0, 2, 1))
    # bool and uint8 have the same layout: reinterpret instead of converting
    column_major = column_major.view(np.uint8) if column_major.dtype == bool else column_major.astype(np.uint8)
    if column_major.shape[0] == 0:
        return []
    encoded = coco_mask.encode(column_major.transpose(2, 1, 0))
    for rle in encoded:
        rle["counts"] = rle["counts"].decode("ascii")
    return encoded


def rle_to_mask(rle: dict) -> np.ndarray:
    """COCO RLE, compressed (str/bytes counts) or uncompressed (list counts) -> HxW bool mask."""
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, str):
        rle = {"size": [height, width], "counts": counts.encode("ascii")}
    return coco_mask.decode(rle).astype(bool)


def mask_to_uncompressed_rle(mask: np.ndarray) -> dict:
    """HxW binary mask -> {"size": [h, w], "counts": [...]}: run lengths in column-major order,
    starting with a run of zeros (as the official segment-anything `uncompressed_rle`)."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    flat = mask.T.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [height, width], "counts": counts}


def compressed_to_uncompressed_rle(rle: dict) -> dict:
    """COCO compressed RLE -> uncompressed run-length list form."""
    return mask_to_uncompressed_rle(rle_to_mask(rle))


def area(mask: np.ndarray | dict) -> int:
    """Pixel count of a binary mask or an RLE."""
    if isinstance(mask, dict):
        if isinstance(mask["counts"], list):
            return int(sum(mask["counts"][1::2]))
        rle = {
            "size": mask["size"],
            "counts": mask["counts"].encode("ascii") if isinstance(mask["counts"], str) else mask["counts"],
        }
        return int(coco_mask.area(rle))
    return int(np.count_nonzero(mask))


def mask_to_box(mask: np.ndarray) -> list[int]:
    """HxW binary mask -> [x, y, w, h] with w = last column - first column (the convention of
    segment-anything's records); [0, 0, 0, 0] for an empty mask."""
    x0, y0, x1, y1 = batched_mask_to_box(torch.as_tensor(np.asarray(mask, dtype=bool))[None])[0].tolist()
    return [x0, y0, x1 - x0, y1 - y0]


class MaskBox(NamedTuple):
    """A mask's tight box in pixels, half-open: columns x0..x1-1 and rows y0..y1-1 hold the mask
    (so `mask[y0:y1, x0:x1]` is its crop and x1 - x0 its width)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def tight_box(mask: np.ndarray) -> MaskBox | None:
    """HxW binary mask -> the smallest box that holds all its pixels (MaskBox, half-open), or None
    for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[y0:y1].any(axis=0))
    return MaskBox(int(cols[0]), y0, int(cols[-1]) + 1, y1)


def crop_to_box(mask: np.ndarray) -> tuple[MaskBox, np.ndarray] | None:
    """HxW binary mask -> (its tight box, the mask cropped to it as a contiguous bool array), or
    None for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    box = tight_box(mask)
    if box is None:
        return None
    return box, np.ascontiguousarray(mask[box.y0 : box.y1, box.x0 : box.x1])


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool masks -> (..., 4) XYXY boxes with inclusive right/bottom pixel indices;
    empty masks give [0, 0, 0, 0]."""
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device, dtype=torch.long)
    shape = masks.shape
    height, width = shape[-2:]
    masks = masks.reshape(-1, height, width)
    # max over a uint8 view: much faster than any() on a CPU, in either memory order
    # (benchmarks/RESULTS.md, "Design measurements")
    as_bytes = masks.view(torch.uint8) if masks.dtype == torch.bool else (masks != 0).view(torch.uint8)
    rows = as_bytes.amax(dim=-1).bool()  # (N, H)
    cols = as_bytes.amax(dim=-2).bool()  # (N, W)
    row_index = torch.arange(height, device=masks.device)
    col_index = torch.arange(width, device=masks.device)
    bottom = (rows * row_index).amax(dim=-1)
    top = torch.where(rows, row_index, height).amin(dim=-1)
    right = (cols * col_index).amax(dim=-1)
    left = torch.where(cols, col_index, width).amin(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = (right < left) | (bottom < top)
    boxes = boxes * (~empty)[:, None]
    return boxes.reshape(*shape[:-2], 4)


def box_xyxy_to_xywh(box: torch.Tensor | np.ndarray | list) -> list:
    """[x0, y0, x1, y1] -> [x0, y0, x1 - x0, y1 - y0]."""
    x0, y0, x1, y1 = [v.item() if hasattr(v, "item") else v for v in box]
    return [x0, y0, x1 - x0, y1 - y0]


def mask_to_polygons(
    mask: np.ndarray, min_area: float = 0.0, tolerance: float = 0.0, holes: bool = False
) -> list[np.ndarray]:
    """HxW binary mask -> outer outlines as (K, 2) float XY arrays in pixel coordinates.

    Outlines follow pixel centres (OpenCV contours). `tolerance` > 0 simplifies each outline
    (Douglas-Peucker, in pixels); outlines enclosing less than `min_area` pixels are dropped;
    `holes=True` also returns the outlines of holes.
    """
    mask = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
    mode = cv2.RETR_CCOMP if holes else cv2.RETR_EXTERNAL
    contours, _ = cv2.findContours(mask, mode, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, tolerance, True)
        if len(contour) < 3 or cv2.contourArea(contour) < min_area:
            continue
        polygons.append(contour.reshape(-1, 2).astype(np.float64))
    return polygons


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes ("holes") or drop islands ("islands") smaller than area_thresh pixels.
    Returns the mask and whether it changed (8-connectivity, as segment-anything)."""
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[:, -1][1:]
    small = [i + 1 for i, size in enumerate(sizes) if size < area_thresh]
    if not small:
        return mask, False
    fill_labels = [0] + small
    if not correct_holes:
        fill_labels = [i for i in range(n_labels) if i not in fill_labels]
        if not fill_labels:
            fill_labels = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill_labels), True


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of XYXY boxes; indices kept, highest score first.

    Same rule as torchvision.ops.nms (suppress when IoU > threshold, box area (x1 - x0) * (y1 - y0)),
    written here so the core does not need torchvision. Memory is linear in the number of boxes.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    boxes = np.asarray(boxes, dtype=np.float64)[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, None)
        width = np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])
        height = np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])
        inter = np.clip(width, 0, None) * np.clip(height, 0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest] |= iou > iou_threshold
    return order[np.array(keep, dtype=np.int64)]
