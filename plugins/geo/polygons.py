"""Polygon clean-up in map units: holes, simplification, orthogonal building outlines, areas."""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon


def to_map(geom, transform):
    """Pixel (col, row) coordinates -> the raster's CRS with its affine transform."""
    t = transform
    return affinity.affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])


def polygons_of(geom):
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    if isinstance(geom, MultiPolygon):
        return list(geom.geoms)
    return [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)] + [
        p for g in getattr(geom, "geoms", []) if isinstance(g, MultiPolygon) for p in g.geoms
    ]


def join(polys):
    polys = [p for p in polys if p is not None and not p.is_empty and p.area > 0]
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def fill_holes(geom):
    return join([Polygon(p.exterior) for p in polygons_of(geom)])


def make_valid(geom):
    """A valid (Multi)Polygon: repaired, lines and points dropped, touching parts united."""
    if geom.is_valid and isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    polys = polygons_of(shapely.make_valid(geom))
    if not polys:
        return Polygon()
    out = shapely.union_all(polys)
    return out if out.is_valid else shapely.make_valid(out)


def simplify(geom, tolerance: float):
    if not tolerance:
        return geom
    return make_valid(geom.simplify(tolerance, preserve_topology=True))


# -- building regularisation ------------------------------------------------------------------

def dominant_angle(poly: Polygon) -> float:
    """The building's main direction (radians in [-pi/4, pi/4)): length-weighted mean of edge
    directions modulo 90 degrees."""
    xy = np.asarray(poly.exterior.coords)
    d = np.diff(xy, axis=0)
    length = np.hypot(d[:, 0], d[:, 1])
    theta = np.arctan2(d[:, 1], d[:, 0])
    s, c = np.sum(length * np.sin(4 * theta)), np.sum(length * np.cos(4 * theta))
    return math.atan2(s, c) / 4.0


def _orthogonal_ring(xy: np.ndarray, min_side: float):
    """Snap a ring (already rotated so the building is axis-aligned) to horizontal and vertical
    sides; returns the new vertices or None when it degenerates."""
    d = np.diff(xy, axis=0)
    if len(d) < 3:
        return None
    horiz = np.abs(d[:, 0]) >= np.abs(d[:, 1])
    length = np.hypot(d[:, 0], d[:, 1])
    mid = (xy[:-1] + xy[1:]) / 2.0
    # runs of consecutive edges of one orientation (cyclic)
    runs = []  # [is_horizontal, total length, weighted coordinate sum]
    for h, ln, m in zip(horiz, length, mid):
        coord = m[1] if h else m[0]
        if runs and runs[-1][0] == h:
            runs[-1][1] += ln
            runs[-1][2] += ln * coord
        else:
            runs.append([bool(h), ln, ln * coord])
    if len(runs) > 1 and runs[0][0] == runs[-1][0]:
        first = runs.pop(0)
        runs[-1][1] += first[1]
        runs[-1][2] += first[2]
    # drop sides shorter than min_side (stair steps), merging their neighbours
    changed = True
    while changed and len(runs) > 4:
        changed = False
        k = min(range(len(runs)), key=lambda i: runs[i][1])
        if runs[k][1] < min_side:
            runs.pop(k)
            n = len(runs)
            a, b = (k - 1) % n, k % n
            if runs[a][0] == runs[b][0] and a != b:
                runs[a][1] += runs[b][1]
                runs[a][2] += runs[b][2]
                runs.pop(b)
            changed = True
    if len(runs) < 4 or len(runs) % 2:
        return None
    lines = [(h, w / ln if ln else 0.0) for h, ln, w in runs]
    pts = []
    for k in range(len(lines)):
        h0, v0 = lines[k]
        h1, v1 = lines[(k + 1) % len(lines)]
        if h0 == h1:
            return None
        pts.append((v1, v0) if h0 else (v0, v1))
    pts.append(pts[0])
    return np.asarray(pts)


def regularize_polygon(poly: Polygon, tolerance: float) -> Polygon:
    """An orthogonal outline (all corners 90 degrees) close to ``poly``.

    Simplify by ``tolerance``, rotate to the building's dominant direction, snap every side to
    horizontal/vertical at the length-weighted mean position of the edges it replaces, drop
    sides shorter than 2 x tolerance, rotate back. Falls back to the minimum rotated rectangle,
    then to the simplified polygon, when the snapped outline is invalid or far from the input.
    """
    if poly.is_empty or poly.area <= 0:
        return poly
    simple = poly.simplify(tolerance, preserve_topology=True)
    if simple.is_empty:
        return poly
    angle = dominant_angle(simple)
    origin = poly.centroid
    rot = affinity.rotate(simple, -angle, origin=origin, use_radians=True)
    rings = []
    for ring in [rot.exterior, *rot.interiors]:
        snapped = _orthogonal_ring(np.asarray(ring.coords), 2.0 * tolerance)
        if snapped is not None:
            rings.append(snapped)
        elif ring is rot.exterior:
            rings = None
            break
    candidate = None
    if rings:
        cand = Polygon(rings[0], [r for r in rings[1:] if Polygon(r).is_valid])
        cand = affinity.rotate(cand, angle, origin=origin, use_radians=True)
        if not cand.is_valid:
            cand = make_valid(cand)
        candidate = cand
    for cand in (candidate, poly.minimum_rotated_rectangle):
        if cand is None or cand.is_empty or not isinstance(cand, Polygon):
            continue
        inter = cand.intersection(poly).area
        iou = inter / (cand.area + poly.area - inter)
        if iou >= 0.7:
            return cand
    return simple if isinstance(simple, Polygon) else poly


def regularize(geom, tolerance: float):
    return join([regularize_polygon(p, tolerance) for p in polygons_of(geom)])


# -- areas -----------------------------------------------------------------------------------

def areas_m2(geoms, crs) -> np.ndarray:
    """Area of each geometry in square metres, correct for any CRS.

    Geodesic area on the CRS's ellipsoid (geometries converted to longitude/latitude of the
    CRS's own geodetic datum) for geographic and projected CRSs alike, so Web Mercator, feet
    and degrees all give true ground area. A CRS without an ellipsoid (engineering/local)
    falls back to planar area times the square of its unit in metres. No CRS: NaN.
    """
    geoms = list(geoms)
    out = np.full(len(geoms), np.nan)
    if crs is None or not geoms:
        return out
    import pyproj

    geod = crs.get_geod()
    if geod is None:
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else float("nan")
        return np.array([g.area for g in geoms]) * factor * factor
    to_lonlat = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    arr = np.array(geoms, dtype=object)
    lonlat = shapely.transform(arr, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))
    for k, g in enumerate(lonlat):
        if g is None or g.is_empty:
            out[k] = 0.0
        else:
            out[k] = abs(geod.geometry_area_perimeter(g)[0])
    return out
