"""Point and box prompts in map coordinates: reading, CRS checks, reprojection, windows.

A prompt is one question to the model: one or more points (label 1 = on the object, 0 = not on
it) and/or one box. Sources:

* a vector file (any format GDAL reads, any CRS) or a GeoDataFrame: Point rows are one prompt
  each, MultiPoint rows one prompt with all their points, Polygon rows one box prompt (the
  polygon's extent in the raster's CRS). Optional columns: ``label`` (1/0, or
  positive/negative) and ``prompt_id`` (rows sharing it form one prompt: points plus at most
  one box);
* a dict ``{"points": [[x, y], ...], "labels": [...], "boxes": [[xmin, ymin, xmax, ymax], ...],
  "crs": "EPSG:4326"}``: every point and every box is its own prompt.

The CRS of the prompts is the file's, unless ``prompts_crs`` overrides it (``"raster"`` means
the raster's CRS). Coordinates that are impossible in that CRS are an error, not a silent
reprojection into nonsense: e.g. a GeoJSON without a ``crs`` member is EPSG:4326 by
definition, so metres in it are caught here (with a hint when they fit the raster's CRS).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import GeoError
from .raster import apply_affine, crs_label, to_pyproj, transform_xy


@dataclass
class Prompt:
    prompt_id: object
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (N, 2) raster CRS
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    box: np.ndarray | None = None  # (4,) xmin, ymin, xmax, ymax in global pixel coordinates


def _label(v) -> int:
    if isinstance(v, np.generic):  # a value read from a column: messages show 2, not np.int64(2)
        v = v.item()
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("1", "pos", "positive", "fg", "foreground", "true", "yes", "include"):
            return 1
        if s in ("0", "neg", "negative", "bg", "background", "false", "no", "exclude"):
            return 0
        raise GeoError(f"prompt label {v!r} is neither positive (1) nor negative (0)")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return 1
    if int(v) not in (0, 1):
        raise GeoError(f"prompt label {v!r} is neither 1 (positive) nor 0 (negative)")
    return int(v)


def _read_source(prompts, prompts_crs):
    """-> (list of (prompt_id, kind, coords ndarray, label)), source CRS (pyproj or None), name,
    the file's format (GDAL driver name; None for a GeoDataFrame or dict))."""
    import geopandas as gpd

    if isinstance(prompts, dict):
        crs = prompts_crs if prompts_crs is not None else prompts.get("crs")
        rows = []
        pts = np.asarray(prompts.get("points", []), dtype=float).reshape(-1, 2)
        labels = prompts.get("labels") or [1] * len(pts)
        if len(labels) != len(pts):
            raise GeoError(f"{len(pts)} points but {len(labels)} labels")
        for k, (p, lab) in enumerate(zip(pts, labels)):
            rows.append((f"p{k}", "point", p.reshape(1, 2), _label(lab)))
        boxes = np.asarray(prompts.get("boxes", []), dtype=float).reshape(-1, 4)
        for k, b in enumerate(boxes):
            if not (b[2] > b[0] and b[3] > b[1]):
                raise GeoError(f"box {', '.join(f'{v:.10g}' for v in b)} must be xmin, ymin, xmax, ymax with"
                               " max > min")
            corners = np.array([[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]])
            rows.append((f"b{k}", "box", corners, 1))
        return rows, crs, "the prompts", None
    if isinstance(prompts, (str, os.PathLike)):
        path = os.fspath(prompts)
        if not os.path.exists(path) and "://" not in path:
            raise GeoError(f"prompt file not found: {path}")
        try:
            gdf = gpd.read_file(path)
        except Exception as exc:
            raise GeoError(f"cannot read prompt file {path}: {exc}") from exc
        name = path
        try:
            import pyogrio

            fmt = pyogrio.read_info(path)["driver"]
        except Exception:  # only used to word a message
            fmt = None
    elif isinstance(prompts, (gpd.GeoDataFrame, gpd.GeoSeries)):
        gdf = prompts if isinstance(prompts, gpd.GeoDataFrame) else gpd.GeoDataFrame(geometry=prompts)
        name, fmt = "the prompt GeoDataFrame", None
    else:
        raise GeoError(
            f"prompts must be a vector file path, a GeoDataFrame or a dict with points/boxes and crs,"
            f" got {type(prompts).__name__}"
        )
    crs = prompts_crs if prompts_crs is not None else gdf.crs
    if len(gdf) == 0:
        raise GeoError(f"{name} holds no prompts")
    ids = gdf["prompt_id"] if "prompt_id" in gdf.columns else None
    labels = gdf["label"] if "label" in gdf.columns else None
    rows = []
    for k, geom in enumerate(gdf.geometry):
        pid = ids.iloc[k] if ids is not None else gdf.index[k]  # default: the row's index (row number in a file)
        if isinstance(pid, np.generic):  # messages and the prompt_id column show 7, not np.int64(7)
            pid = pid.item()
        lab = _label(labels.iloc[k]) if labels is not None else 1
        if geom is None or geom.is_empty:
            raise GeoError(f"{name}: row {k} has no geometry")
        gt = geom.geom_type
        if gt == "Point":
            rows.append((pid, "point", np.asarray(geom.coords, float)[:, :2], lab))
        elif gt == "MultiPoint":
            rows.append((pid, "point", np.array([p.coords[0][:2] for p in geom.geoms], float), lab))
        elif gt in ("Polygon", "MultiPolygon"):
            rings = [np.asarray(p.exterior.coords, float)[:, :2]
                     for p in (geom.geoms if gt == "MultiPolygon" else [geom])]
            rows.append((pid, "box", np.concatenate(rings), lab))
        else:
            raise GeoError(f"{name}: row {k} is a {gt}; prompts are Points (or MultiPoints) and Polygons (boxes)")
    return rows, crs, name, fmt


def _coords_valid_in(crs, xy: np.ndarray) -> np.ndarray:
    """Which coordinates are possible in ``crs`` (lon/lat range, or inside its area of use)."""
    import pyproj

    x, y = xy[:, 0], xy[:, 1]
    ok = np.isfinite(x) & np.isfinite(y)
    if crs.is_geographic:
        return ok & (np.abs(x) <= 180) & (np.abs(y) <= 90)
    try:
        lon, lat = transform_xy(pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True), x, y)
    except pyproj.exceptions.ProjError:
        return np.zeros(len(x), bool)
    ok &= np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 360) & (np.abs(lat) <= 90)
    aou = crs.area_of_use
    if aou is not None:
        margin = 10.0
        west, east = aou.west - margin, aou.east + margin
        if aou.west > aou.east:  # crosses the antimeridian
            inside_lon = (lon >= west) | (lon <= east)
        else:
            inside_lon = (lon >= west) & (lon <= east)
        ok &= inside_lon & (lat >= aou.south - margin) & (lat <= aou.north + margin)
    return ok


def load_prompts(prompts, *, raster_crs, transform, width: int, height: int, prompts_crs=None,
                 skip_outside: bool = False):
    """Prompts in global pixel coordinates of the raster (points (col, row); boxes in pixels).

    ``prompts`` is one source or a list of sources (files, GeoDataFrames, dicts), each in its
    own CRS. Raises GeoError when a prompt CRS is missing or contradicts the coordinates, or
    when prompts fall outside the raster (unless ``skip_outside``, which drops them).
    """
    if isinstance(prompts, (list, tuple)):
        out = []
        for k, one in enumerate(prompts):
            for p in _load_one(one, raster_crs=raster_crs, transform=transform, width=width, height=height,
                               prompts_crs=prompts_crs, skip_outside=skip_outside):
                p.prompt_id = f"{k}:{p.prompt_id}"
                out.append(p)
        return out
    return _load_one(prompts, raster_crs=raster_crs, transform=transform, width=width, height=height,
                     prompts_crs=prompts_crs, skip_outside=skip_outside)


def _load_one(prompts, *, raster_crs, transform, width, height, prompts_crs, skip_outside):
    import pyproj

    rows, crs, name, fmt = _read_source(prompts, prompts_crs)
    if not rows:
        raise GeoError(f"{name} holds no prompts")
    if isinstance(crs, str) and crs.strip().lower() == "raster":
        crs = raster_crs
    elif crs is not None:
        crs = to_pyproj(crs)
    if raster_crs is None:  # pixel space: prompts must be pixel coordinates too
        if crs is not None:
            raise GeoError(f"{name} has a CRS ({crs_label(crs)}) but the raster is processed in pixel space;"
                           " give prompts in pixel coordinates (column, row) without a CRS")
        to_raster = None
    elif crs is None:
        raise GeoError(f"{name} has no CRS: say which CRS its coordinates are in with prompts_crs="
                       " (CLI --prompt-crs), e.g. EPSG:4326, or 'raster' for the raster's own CRS")
    else:
        allxy = np.concatenate([r[2] for r in rows])
        ok = _coords_valid_in(crs, allxy)
        if not ok.all():
            bad = allxy[~ok][0]
            hint = ""
            px = np.column_stack(apply_affine(~transform, allxy[:, 0], allxy[:, 1]))
            inside = (px[:, 0] >= 0) & (px[:, 0] <= width) & (px[:, 1] >= 0) & (px[:, 1] <= height)
            wrong, fix = _crs_mistake(crs, fmt, prompts_crs is not None)
            if raster_crs is not None and inside.mean() >= 0.5:
                hint = (f" {inside.mean():.0%} of them fall inside the raster when read in the raster's own CRS:"
                        " if that is what"
                        f" they are, pass prompts_crs='raster' (CLI --prompt-crs raster) or {fix}.")
            raise GeoError(
                f"the CRS of {name} is {crs_label(crs)}, but {int((~ok).sum())} of {len(allxy)} coordinates"
                f" (e.g. {bad[0]:.6g}, {bad[1]:.6g}) are impossible in that CRS; {wrong}.{hint}"
            )
        to_raster = None if crs.equals(raster_crs) else pyproj.Transformer.from_crs(crs, raster_crs, always_xy=True)
    # all coordinates at once: prompt CRS -> raster CRS -> global pixels
    allxy = np.concatenate([r[2] for r in rows])
    if to_raster is not None:
        allxy = np.column_stack(transform_xy(to_raster, allxy[:, 0], allxy[:, 1]))
    allpx = np.column_stack(apply_affine(~transform, allxy[:, 0], allxy[:, 1]))
    splits = np.cumsum([len(r[2]) for r in rows])[:-1]

    grouped: dict = {}
    order = []
    for (pid, kind, _, lab), px in zip(rows, np.split(allpx, splits)):
        if pid not in grouped:
            grouped[pid] = Prompt(pid)
            order.append(pid)
        p = grouped[pid]
        if kind == "point":
            p.points = np.concatenate([p.points, px])
            p.labels = np.concatenate([p.labels, np.full(len(px), lab, int)])
        else:
            if p.box is not None:
                raise GeoError(f"{name}: prompt {pid!r} has more than one box; a prompt takes at most one")
            p.box = np.array([px[:, 0].min(), px[:, 1].min(), px[:, 0].max(), px[:, 1].max()])
    result, outside = [], []
    for pid in order:
        p = grouped[pid]
        inside = True
        if len(p.points):
            inside &= bool(np.all((p.points[:, 0] >= 0) & (p.points[:, 0] <= width)
                                  & (p.points[:, 1] >= 0) & (p.points[:, 1] <= height)))
        if p.box is not None:
            b = p.box
            if b[2] <= 0 or b[0] >= width or b[3] <= 0 or b[1] >= height:
                inside = False
            else:
                p.box = np.array([max(b[0], 0), max(b[1], 0), min(b[2], width), min(b[3], height)])
        if not len(p.points) and p.box is None:
            continue
        if len(p.points) and not (p.labels == 1).any() and p.box is None:
            raise GeoError(f"{name}: prompt {pid!r} has only negative points; add a positive point or a box")
        (result if inside else outside).append(p)
    if outside and not skip_outside:
        ex = outside[0]
        where = ex.points[0] if len(ex.points) else ex.box[:2]
        x, y = apply_affine(transform, where[0], where[1])
        raise GeoError(
            f"{len(outside)} of {len(order)} prompts in {name} fall outside the raster (e.g. prompt"
            f" {ex.prompt_id!r} at {x:.6g}, {y:.6g} in the raster's CRS; the raster covers"
            f" {_bounds_text(transform, width, height)}); check the prompts' CRS, or pass"
            " skip_outside=True (CLI --skip-outside) to drop them"
        )
    if not result:
        raise GeoError(f"none of the prompts in {name} lie on the raster")
    return result


#: GDAL driver names as users know the formats
FORMAT_NAMES = {"GPKG": "GeoPackage", "ESRI Shapefile": "Shapefile"}


def _crs_mistake(crs, fmt: str | None, overridden: bool) -> tuple[str, str]:
    """(what is wrong, how to fix it) when coordinates are impossible in the prompts' CRS, worded
    for where that CRS came from: prompts_crs, a file of format ``fmt``, a GeoDataFrame or dict."""
    if overridden:
        return "prompts_crs (CLI --prompt-crs) is not the CRS they are in", "give the CRS they are in"
    if fmt is None:
        return "the CRS given with the prompts is wrong", "give the CRS they are in"
    wrong = f"the CRS the {FORMAT_NAMES.get(fmt, fmt)} file declares is wrong"
    if fmt == "GeoJSON" and crs.to_epsg() == 4326:
        wrong += " (a GeoJSON without a 'crs' member is EPSG:4326 by definition)"
    return wrong, "fix the file's CRS"


def _bounds_text(transform, width, height) -> str:
    xs, ys = apply_affine(transform, [0, width, 0, width], [0, 0, height, height])
    return f"x {min(xs):.6g}..{max(xs):.6g}, y {min(ys):.6g}..{max(ys):.6g}"


def prompt_extent(p: Prompt) -> tuple[float, float, float, float]:
    xs, ys = [], []
    if len(p.points):
        xs += list(p.points[:, 0])
        ys += list(p.points[:, 1])
    if p.box is not None:
        xs += [p.box[0], p.box[2]]
        ys += [p.box[1], p.box[3]]
    return min(xs), min(ys), max(xs), max(ys)


@dataclass
class PromptWindow:
    c0: int
    r0: int
    w: int
    h: int
    out_shape: tuple[int, int] | None  # (rows, cols) of a reduced read, None = full resolution
    members: list = field(default_factory=list)

    def fits(self, ext, margin: int, width: int, height: int) -> bool:
        x0, y0, x1, y1 = ext
        left = self.c0 + (margin if self.c0 > 0 else 0)
        top = self.r0 + (margin if self.r0 > 0 else 0)
        right = self.c0 + self.w - (margin if self.c0 + self.w < width else 0)
        bottom = self.r0 + self.h - (margin if self.r0 + self.h < height else 0)
        return left <= x0 and x1 <= right and top <= y0 and y1 <= bottom


def plan_windows(prompts, width: int, height: int, tile_size: int, read_size: int | None = None):
    """Windows to answer the prompts from: each prompt lies at least a quarter window from every
    edge of its window that is not the raster's own edge (so a prompt near a tile border gets a
    window centred on it); nearby prompts share a window (one image embedding). Windows are
    ``tile_size`` pixels (larger around a box that does not fit) and are read at reduced
    resolution when larger than ``read_size`` (default ``tile_size``)."""
    read_size = read_size or tile_size
    margin = tile_size // 4
    standard = (min(tile_size, width), min(tile_size, height))
    windows: list[PromptWindow] = []
    for k in sorted(range(len(prompts)), key=lambda i: prompt_extent(prompts[i])[1::-1]):
        ext = prompt_extent(prompts[k])
        for win in windows:
            if (win.w, win.h) == standard and win.fits(ext, margin, width, height):
                win.members.append(k)
                break
        else:
            cx, cy = (ext[0] + ext[2]) / 2.0, (ext[1] + ext[3]) / 2.0
            need = max(ext[2] - ext[0], ext[3] - ext[1]) + 2 * margin
            size = max(tile_size, int(math.ceil(need)))
            w, h = min(size, width), min(size, height)
            c0 = int(min(max(0, round(cx - w / 2)), width - w))
            r0 = int(min(max(0, round(cy - h / 2)), height - h))
            out_shape = None
            if max(w, h) > read_size:
                f = read_size / max(w, h)
                out_shape = (max(1, round(h * f)), max(1, round(w * f)))
            windows.append(PromptWindow(c0, r0, w, h, out_shape, [k]))
    return windows


def split_long_box(p: Prompt, tile_size: int) -> list[Prompt]:
    """``p`` itself, or, when its box is so long and thin that one window around it would be read
    at less than half the resolution of windows sized to its short side, overlapping parts along
    its length (each the box's cross-section over a stretch of it, with the points that lie in
    that stretch), which ``plan_windows`` gives windows of their own. The caller joins the parts'
    masks into one answer."""
    from .tiling import axis_spans

    if p.box is None:
        return [p]
    margin = tile_size // 4
    x0, y0, x1, y1 = p.box
    along_x = x1 - x0 >= y1 - y0
    lo, hi = (x0, x1) if along_x else (y0, y1)
    short = (y1 - y0) if along_x else (x1 - x0)
    side = max(tile_size, math.ceil(short) + 2 * margin)  # the window a part needs
    part = side - 2 * margin  # how much of the box's length one part window holds
    if hi - lo + 2 * margin <= 2 * side:
        return [p]
    start = math.floor(lo)
    spans = axis_spans(math.ceil(hi) - start, part, part // 4)  # a quarter overlap: the masks join
    parts = []
    for s0, s1 in spans:
        a, b = max(lo, start + s0), min(hi, start + s1)
        box = np.array([a, y0, b, y1]) if along_x else np.array([x0, a, x1, b])
        inside = np.ones(len(p.points), bool)
        if len(p.points):
            coord = p.points[:, 0] if along_x else p.points[:, 1]
            inside = (coord >= a) & (coord <= b)
        parts.append(Prompt(p.prompt_id, points=p.points[inside], labels=p.labels[inside], box=box))
    return parts
