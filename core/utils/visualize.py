"""Pictures a person can look at: masks, boxes and prompt points drawn over an image."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from .files import atomic_output


def mask_colors(count: int, seed: int = 0) -> np.ndarray:
    """`count` distinct, saturated RGB colours (uint8), the same for the same count and seed."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(count) * 0.618033988749895 + rng.random()) % 1.0
    return np.array(
        [[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.95)] for h in hues], dtype=np.uint8
    ).reshape(-1, 3)


def overlay_masks(
    image: np.ndarray,
    masks: np.ndarray | list[np.ndarray],
    boxes: np.ndarray | None = None,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """HxWx3 uint8 image + (N, H, W) masks -> HxWx3 uint8 with each mask tinted and outlined.

    Larger masks are drawn first so small ones stay visible. Boxes are XYXY pixels; points are
    drawn green (label 1) or red (label 0).
    """
    canvas = image.astype(np.float32).copy()
    masks = [np.asarray(m, dtype=bool) for m in masks]
    colors = mask_colors(len(masks))
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i in order:
        canvas[masks[i]] = canvas[masks[i]] * (1 - alpha) + colors[i] * alpha
    out = np.clip(canvas, 0, 255).astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 600))
    for i in order:
        contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colors[i]), thickness)
    if boxes is not None:
        for i, box in enumerate(np.asarray(boxes).reshape(-1, 4)):
            color = tuple(int(c) for c in colors[i % max(len(colors), 1)]) if len(colors) else (255, 255, 0)
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness + 1)
    if points is not None:
        points = np.asarray(points).reshape(-1, 2)
        labels = np.ones(len(points)) if point_labels is None else np.asarray(point_labels).reshape(-1)
        radius = 3 * thickness + 3
        for (x, y), label in zip(points, labels):
            color = (40, 220, 40) if label == 1 else (230, 40, 40)
            cv2.circle(out, (int(round(x)), int(round(y))), radius, color, -1)
            cv2.circle(out, (int(round(x)), int(round(y))), radius, (255, 255, 255), max(1, thickness // 2))
    return out


def save_png(path, image: np.ndarray) -> None:
    """Write an RGB (or single-channel) uint8 array as PNG, atomically."""
    from PIL import Image

    with atomic_output(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
