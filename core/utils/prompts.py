"""Checking prompts against an image before they reach a model: one clear PromptError for each
kind of mistake. numpy only (no torch), so that the ONNX predictor can use them too."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import PromptError


class PromptBatch(NamedTuple):
    """Checked prompts for B objects, in pixels of the original image: point_coords (B, N, 2)
    with point_labels (B, N), boxes (B, 4) XYXY, mask_input (1, 256, 256) low-res logits of an
    earlier call (shared by the objects); any of them None."""

    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    boxes: np.ndarray | None
    mask_input: np.ndarray | None = None


def check_points(point_coords, point_labels, original_size: tuple[int, int], batched: bool):
    """(N, 2) XY pixels and (N,) labels (batched: (B, N, 2), (B, N)) on an image of original_size
    (H, W) -> float64 coords and int64 labels, or (None, None) when neither is given."""
    if point_coords is None and point_labels is None:
        return None, None
    if point_coords is None or point_labels is None:
        raise PromptError(
            "point_coords and point_labels go together: give both (labels 1 = foreground, 0 = background)"
        )
    coords = np.asarray(point_coords, dtype=np.float64)
    labels = np.asarray(point_labels)
    want = 3 if batched else 2
    if coords.ndim != want or coords.shape[-1] != 2:
        shape = "(B, N, 2)" if batched else "(N, 2)"
        raise PromptError(f"point_coords must have shape {shape} (XY pixels), got {coords.shape}")
    if labels.shape != coords.shape[:-1]:
        raise PromptError(
            f"{coords.shape[-2]} points but point_labels has shape {labels.shape}: give one label per point"
        )
    if not np.isfinite(coords).all():
        raise PromptError("point_coords contain NaN or infinite values")
    if not np.isin(labels, (0, 1)).all():
        raise PromptError(
            f"point_labels must be 1 (foreground) or 0 (background), got {np.unique(labels).tolist()}"
        )
    height, width = original_size
    outside = (coords[..., 0] < 0) | (coords[..., 0] > width) | (coords[..., 1] < 0) | (coords[..., 1] > height)
    if outside.any():
        x, y = coords[outside][0]
        raise PromptError(
            f"point ({x:g}, {y:g}) lies outside the {width}x{height} image; coordinates are XY pixels"
        )
    return coords, labels.astype(np.int64)


def check_boxes(box, original_size: tuple[int, int], batched: bool):
    """A (4,) XYXY box (batched: (B, 4)) -> float64 (B, 4), clipped to the image where it overhangs;
    None when not given."""
    if box is None:
        return None
    boxes = np.asarray(box, dtype=np.float64)
    if batched:
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise PromptError(f"boxes must have shape (B, 4) as [x0, y0, x1, y1] pixels, got {boxes.shape}")
    else:
        if boxes.size != 4:
            raise PromptError(f"box must be [x0, y0, x1, y1] pixels, got shape {boxes.shape}")
        boxes = boxes.reshape(1, 4)
    if not np.isfinite(boxes).all():
        raise PromptError("box coordinates contain NaN or infinite values")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        b = boxes[bad][0]
        raise PromptError(
            f"box {b.tolist()} has x1 < x0 or y1 < y0; boxes are [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1"
        )
    height, width = original_size
    disjoint = (boxes[:, 0] > width) | (boxes[:, 1] > height) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if disjoint.any():
        b = boxes[disjoint][0]
        raise PromptError(f"box {b.tolist()} lies entirely outside the {width}x{height} image")
    # A box that only overhangs the image (a rectangle dragged past its edge) is clipped to it.
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


def check_mask_input(mask_input):
    """Low-res logits (1, 256, 256) or (256, 256) of an earlier call -> float32 (1, 256, 256)."""
    if mask_input is None:
        return None
    mask = np.asarray(mask_input, dtype=np.float32)
    if mask.shape == (256, 256):
        mask = mask[None]
    if mask.shape != (1, 256, 256):
        raise PromptError(
            f"mask_input must be the (1, 256, 256) low-res logits of an earlier call, got shape {mask.shape}"
        )
    return mask


def check_prompt(
    original_size: tuple[int, int], point_coords=None, point_labels=None, box=None, mask_input=None
) -> PromptBatch:
    """The checks of predict for one object on an image of original_size (H, W): point_coords (N, 2)
    with point_labels (N,), box (4,) XYXY pixels, mask_input (1, 256, 256) or (256, 256) low-res
    logits. Raises PromptError naming what is wrong; returns them as a PromptBatch of B = 1 (None
    where not given; a box that only overhangs the image clipped to it)."""
    coords, labels = check_points(point_coords, point_labels, original_size, batched=False)
    boxes = check_boxes(box, original_size, batched=False)
    return PromptBatch(
        None if coords is None else coords[None],
        None if labels is None else labels[None],
        boxes,
        check_mask_input(mask_input),
    )


def check_prompts(original_size: tuple[int, int], point_coords=None, point_labels=None, boxes=None) -> PromptBatch:
    """The checks of predict_batch for an image of original_size (H, W), before it is encoded:
    point_coords (B, N, 2) with point_labels (B, N) and/or boxes (B, 4), XY pixels. Raises
    PromptError naming what is wrong; returns them as predict_batch uses them, a PromptBatch
    without mask_input (None where not given; boxes that only overhang the image clipped to it)."""
    coords, labels = check_points(point_coords, point_labels, original_size, batched=True)
    box_array = check_boxes(boxes, original_size, batched=True)
    if coords is not None and box_array is not None and coords.shape[0] != box_array.shape[0]:
        raise PromptError(f"{coords.shape[0]} point sets but {box_array.shape[0]} boxes: give one point set per box")
    if coords is None and box_array is None:
        raise PromptError("predict_batch needs point_coords/point_labels or boxes")
    return PromptBatch(coords, labels, box_array)
