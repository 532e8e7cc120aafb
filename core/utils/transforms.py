"""Resizing images and prompts to the model's 1024-px input frame, as SAM's reference does, and
mask logits back to the image."""

from __future__ import annotations

import cv2
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


def low_res_extent(input_size: tuple[int, int], scale: int, limit: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of low-res mask logits that SAM's postprocessing reads to produce the
    input_size crop at an integer `scale`, at most `limit`: output row r reads low-res rows
    floor((r + 0.5) / scale - 0.5) and the one after it."""
    return min(limit[0], input_size[0] // scale + 2), min(limit[1], input_size[1] // scale + 2)


def upscale_logits(
    low_res: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    scale: int = 4,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Low-res mask logits (h, w) float32 -> logits at original_size (H, W), written to `out` if given.

    SAM's postprocessing: bilinear (half-pixel centres) to `scale` times the low-res size (4 x 256
    = 1024), crop the resized image's input_size, bilinear to original_size. low_res is SAM's
    256 x 256 grid or its top-left part, as long as that covers the rows and columns the crop
    reads. Only those are upscaled: at an integer scale each output pixel is computed from its own
    position, so the kept pixels are the same. OpenCV's separable resize is several times faster on
    a CPU than torch.nn.functional.interpolate (benchmarks/RESULTS.md, "Design measurements"); the
    two differ by float32 rounding of the source positions (~2e-5 of the logits' range), so at most
    a few pixels whose logit is that close to zero change sides.
    """
    input_h, input_w = input_size
    rows, cols = low_res_extent(input_size, scale, low_res.shape)
    if rows * scale < input_h or cols * scale < input_w:
        raise ValueError(f"low-res logits {low_res.shape} do not cover the {input_h}x{input_w} input at scale {scale}")
    upscaled = cv2.resize(low_res[:rows, :cols], (cols * scale, rows * scale), interpolation=cv2.INTER_LINEAR)
    height, width = original_size
    return cv2.resize(upscaled[:input_h, :input_w], (width, height), dst=out, interpolation=cv2.INTER_LINEAR)
