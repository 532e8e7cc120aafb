"""Masks -> Label Studio result regions (brush RLE and/or polygons in percent coordinates)."""

from __future__ import annotations

import logging

import numpy as np

# The format pieces live in core (auto-annotation writes Label Studio JSON too); the names stay
# importable from here.
from samkit.utils.label_studio_format import (  # noqa: F401
    BRUSH_HEADER_BITS, BRUSH_LONGEST, BRUSH_WIDTHS, brush_rle, mean_score, percent_points, region, region_id,
    unit_score,
)
from samkit.utils.outlines import (  # noqa: F401
    POINTS_PER_HOLE, BackgroundParts, background_parts, capped_outlines, mask_outlines, polygon_area,
)

from .label_config import Control

log = logging.getLogger("samkit.label_studio")


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
        kept = sum(polygon_area(p) for p in polygons[:max_polygons])
        dropped = sum(polygon_area(p) for p in polygons[max_polygons:])
        log.warning("a mask has %d polygon parts: kept the largest %d, dropped %d (%.0f px, %.1f%% of the "
                    "polygon area); raise SAMKIT_LS_MAX_POLYGONS to keep more", len(polygons), max_polygons,
                    len(polygons) - max_polygons, dropped, 100.0 * dropped / max(kept + dropped, 1e-9))
    regions = []
    for poly in polygons[:max_polygons]:
        value: dict = {"points": percent_points(poly, w, h), "closed": True}
        if label is not None:
            value["polygonlabels"] = [label]
        regions.append(_region(control, w, h, value, score))
    return regions


def _region(control: Control, width: int, height: int, value: dict, score: float | None) -> dict:
    return region(control.name, control.to_name, control.result_type, width, height, value, score)


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
