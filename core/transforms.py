"""Resizing images and prompts to the model's 1024-px input frame, as SAM's reference does."""

from __future__ import annotations

import numpy as np
from PIL import Image


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to `long_side`, rounded to the nearest integer."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """HxWx3 uint8 -> uint8 with the longest side `long_side`, resampled as Pillow's bilinear does
    (which is what the reference uses; OpenCV's bilinear gives visibly different masks)."""
    height, width = image.shape[:2]
    new_h, new_w = preprocess_shape(height, width, long_side)
    if (new_h, new_w) == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def scale_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """XY pixel coordinates (..., 2) in the original image -> the resized input frame."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


def scale_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """XYXY boxes (..., 4) in the original image -> the resized input frame."""
    shape = np.shape(boxes)
    return scale_coords(np.reshape(boxes, (-1, 2, 2)), original_size, long_side).reshape(shape)
