"""Masks -> Label Studio result regions (brush RLE and/or polygons in percent coordinates)."""

from __future__ import annotations

import secrets
import string

import numpy as np

from .label_config import Control

_ID_CHARS = string.ascii_letters + string.digits


def region_id() -> str:
    """A 10-character id like the ones Label Studio's editor makes."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(10))


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of an HxW boolean mask (label_studio_sdk's codec: the mask scaled
    to 255 and repeated into RGBA, row-major)."""
    from label_studio_sdk.converter.brush import mask2rle

    return mask2rle(np.ascontiguousarray(mask, dtype=np.uint8) * np.uint8(255))


def brush_region(mask: np.ndarray, control: Control, label: str | None, score: float | None) -> dict:
    h, w = mask.shape
    value: dict = {"format": "rle", "rle": brush_rle(mask)}
    if label is not None:
        value["brushlabels"] = [label]
    return _region(control, w, h, value, score)


def polygon_regions(mask: np.ndarray, control: Control, label: str | None, score: float | None,
                    tolerance: float = 1.0, min_area: int = 0, max_polygons: int = 20) -> list[dict]:
    """One polygon region per connected part of the mask (largest first), points in percent of
    the image size as Label Studio stores them."""
    from samkit import mask_utils

    h, w = mask.shape
    polygons = mask_utils.mask_to_polygons(mask, min_area=min_area, tolerance=tolerance)
    polygons = [p for p in polygons if len(p) >= 3]
    polygons.sort(key=lambda p: -_area(p))
    regions = []
    for poly in polygons[:max_polygons]:
        pts = np.asarray(poly, dtype=np.float64) + 0.5  # outlines follow pixel centres
        pct = np.stack([pts[:, 0] / w * 100.0, pts[:, 1] / h * 100.0], axis=1).clip(0.0, 100.0)
        value: dict = {"points": [[round(float(x), 4), round(float(y), 4)] for x, y in pct], "closed": True}
        if label is not None:
            value["polygonlabels"] = [label]
        regions.append(_region(control, w, h, value, score))
    return regions


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
        region["score"] = round(float(score), 4)
    return region


def mask_regions(mask: np.ndarray, outputs: list[Control], wanted_label: str | None, score: float | None,
                 polygon_tolerance: float = 1.0, min_area: int = 0) -> list[dict]:
    """The regions of one mask for every output tool (brush and/or polygon)."""
    regions: list[dict] = []
    if not mask.any():
        return regions
    for control in outputs:
        label = control.pick_label(wanted_label)
        if control.tag == "BrushLabels":
            regions.append(brush_region(mask, control, label, score))
        elif control.tag == "PolygonLabels":
            regions.extend(polygon_regions(mask, control, label, score, polygon_tolerance, min_area))
    return regions
