"""``samkit.geo.vectorize`` and ``samkit.geo.info``."""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np

from .errors import GeoError
from .raster import gdal_bounded

log = logging.getLogger("samkit.geo")

COLUMNS = ["id", "score", "stability_score", "area_m2", "area_px", "tile", "n_tiles"]
PROMPT_COLUMNS = ["id", "prompt_id", "score", "stability_score", "area_m2", "area_px", "tile"]
#: text prompts add the phrase each object was found as
TEXT_COLUMNS = COLUMNS[:1] + ["label"] + COLUMNS[1:]
COLUMN_TYPES = {"id": "int64", "label": "string", "prompt_id": "string", "score": "float64",
                "stability_score": "float64", "area_m2": "float64", "area_px": "float64", "tile": "string",
                "n_tiles": "int64"}


@gdal_bounded
def vectorize(
    src,
    dst=None,
    *,
    generator=None,
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    generator_options: dict | None = None,
    text=None,
    det_model: str | None = None,
    box_threshold: float = 0.25,
    text_threshold: float = 0.25,
    bands=None,
    tile_size: int = 1024,
    overlap: int | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    fill_holes: bool = False,
    regularize: bool = False,
    prompts=None,
    prompts_crs=None,
    skip_outside: bool = False,
    predictor=None,
    stretch="auto",
    nodata: float | None = None,
    crs=None,
    pixel_space: bool = False,
    to_crs=None,
    layer: str | None = None,
    id_raster=None,
    iou_thresh: float = 0.5,
    dask=None,
    resume: bool = True,
    checkpoint_dir=None,
    keep_checkpoints: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    allow_empty: bool = False,
):
    """Segment a raster of any size and write georeferenced polygons; returns the GeoDataFrame.

    Segment everything (default) tile by tile, or answer ``prompts`` (points/boxes in map
    coordinates). See the README's GIS section for every option; in short:

    - ``src``: any raster GDAL reads; ``dst``: output path, format from its extension
      (.gpkg default choice, .geojson, .shp, .fgb, .parquet); None writes nothing.
    - ``generator``: anything with ``generate(image) -> records`` like ``samkit.MaskGenerator``;
      None builds a MaskGenerator on ``model`` (``generator_options``: ``samkit.GeneratorOptions``
      names). ``model`` None: ``$SAMKIT_CHECKPOINT``, else ``$SAMKIT_MODEL``, else mobile_sam;
      ``device`` / ``dtype`` None: ``$SAMKIT_DEVICE`` / ``$SAMKIT_DTYPE``, else the best device, float32.
    - ``text``: segment what these phrases name ("building. tree." or a list) instead of
      everything: a text detector (``det_model``: a GroundingDINO / OWLv2 Hugging Face id or local
      folder; None: GroundingDINO tiny) finds boxes in each tile (``box_threshold``,
      ``text_threshold``), SAM segments each box, and the objects are merged across tiles as
      everything else is; a ``label`` column names each object's phrase. ``model`` may then also be
      a samkit.Predictor (its embedding cache is used).
    - ``bands`` (1-based, 1 or 3), ``stretch`` (auto | none | minmax | (p_lo, p_hi) | values),
      ``nodata`` (override value), ``crs`` (assign) or ``pixel_space``.
    - ``tile_size``/``overlap`` in pixels; ``min_area`` in m^2 (pixels in pixel space);
      ``simplify`` tolerance in map units; ``fill_holes``; ``regularize`` (orthogonal outlines).
    - ``id_raster``: also write a GeoTIFF of instance ids; ``to_crs``: reproject the output.
    - ``dask``: scheduler address, ``distributed.Client`` or number of local workers.
    - ``resume``/``checkpoint_dir``/``keep_checkpoints``: per-tile checkpoints (default next to
      ``dst``), removed after success unless kept.
    """
    from . import output, raster

    t_start = time.time()
    dst_path = output.check_output(dst, overwrite=overwrite, src=src) if dst is not None else None
    id_path = (output.check_output(id_raster, overwrite=overwrite, what="id raster", src=src)
               if id_raster is not None else None)
    if id_path is not None and id_path.suffix.lower() not in (".tif", ".tiff"):
        raise GeoError(f"the id raster is a GeoTIFF: give it a .tif name, got {id_path.name}")
    if min_area < 0 or simplify < 0:
        raise GeoError("min_area and simplify must be >= 0")
    if checkpoint_dir is not None:  # checked before the model loads; made when the first tile runs
        from samkit.errors import OutputError
        from samkit.utils.files import output_directory

        try:
            output_directory(checkpoint_dir, create=False)
        except OutputError as exc:
            raise GeoError(f"checkpoint directory: {exc}") from None
    out_to_crs = raster.to_pyproj(to_crs) if to_crs is not None else None

    ds, spec, out_crs, transform = raster.prepare(src, bands=bands, nodata=nodata, stretch=stretch, crs=crs,
                                                  pixel_space=pixel_space)
    try:
        if out_to_crs is not None and out_crs is None:
            raise GeoError("to_crs needs a georeferenced raster; it cannot reproject pixel coordinates")
        if dst_path is not None:
            output.check_output_crs(dst_path, out_to_crs if out_to_crs is not None else out_crs)
        if prompts is not None and text is not None:
            raise GeoError("give prompts or text, not both: text finds its own boxes in every tile")
        if prompts is not None:
            records, px_geoms = _run_prompts(ds, spec, out_crs, transform, prompts, prompts_crs=prompts_crs,
                                             skip_outside=skip_outside, predictor=predictor, model=model,
                                             device=device, dtype=dtype, tile_size=tile_size, progress=progress)
            columns = PROMPT_COLUMNS
            store = None
        else:
            names = None
            if text is not None or det_model is not None:
                generator, names = _text_generator(text, det_model, generator, generator_options, model, device,
                                                   dtype, box_threshold, text_threshold)
            records, px_geoms, store = _run_grid(
                ds, spec, transform, dst_path, generator=generator, model=model, device=device, dtype=dtype,
                generator_options=generator_options, tile_size=tile_size, overlap=overlap,
                iou_thresh=iou_thresh, dask=dask, resume=resume, checkpoint_dir=checkpoint_dir,
                progress=progress, names=names)
            columns = COLUMNS if names is None else TEXT_COLUMNS
        gdf, px_geoms = _finish(ds, spec, records, px_geoms, out_crs, transform, columns,
                                min_area=min_area, simplify=simplify, fill_holes=fill_holes, regularize=regularize)
        if len(gdf) == 0 and not allow_empty:
            if store is not None and not keep_checkpoints:
                store.remove()  # "nothing was written" means nothing, no hidden tile folder either
            raise GeoError(
                f"no objects found in {ds.name} (after nodata, min_area={min_area}); nothing was written."
                " Lower the model's thresholds, check --bands/--nodata, or pass allow_empty=True"
                " (CLI --allow-empty) to write an empty layer"
            )
        if out_to_crs is not None:
            gdf = gdf.to_crs(out_to_crs)
        if dst_path is not None:
            output.write_vector(gdf, dst_path, layer=layer)
        if id_path is not None:
            output.write_id_raster(zip(gdf["id"], px_geoms), id_path, width=ds.width, height=ds.height,
                                   crs=out_crs if not pixel_space else None,
                                   transform=transform if not pixel_space else ds.transform)
        if store is not None and not keep_checkpoints:
            store.remove()
    finally:
        if ds is not src:  # a dataset the caller opened stays open
            ds.close()
    log.info("%d objects from %s in %.1f s", len(gdf), spec.path, time.time() - t_start)
    return gdf


def _text_generator(text, det_model, generator, generator_options, model, device, dtype, box_threshold,
                    text_threshold):
    """(samkit.annotate's DetectSegmenter on the text detector: the tiles' segmenter, its class
    names). The detector loads here, so a model that cannot load is one line before any tile."""
    from samkit.errors import SamkitError
    from samkit.models import dtype_setting, model_source

    if text is None:
        raise GeoError("det_model (--det-model) is the text detector: give the text to look for too, e.g. "
                       "--text 'building'")
    if generator is not None or generator_options:
        raise GeoError("text prompts build their own segmenter: leave out generator / generator_options "
                       "(--generator, --points-per-side, ...)")
    try:
        from samkit.annotate import text_segmenter

        dtype = dtype_setting(dtype)
        if model is None or isinstance(model, (str, os.PathLike)):
            model = model_source(model)  # decided here, so that every Dask worker runs the same model
        segmenter = text_segmenter(text, det_model, model, conf=box_threshold,
                                   text_threshold=text_threshold, device=device,
                                   dtype=None if dtype is None else str(dtype))
    except SamkitError as exc:
        raise GeoError(str(exc)) from None
    return segmenter, segmenter.names


def _run_grid(ds, spec, transform, dst_path, *, generator, model, device, dtype, generator_options, tile_size,
              overlap, iou_thresh, dask, resume, checkpoint_dir, progress, names=None):
    from .generators import GeneratorSpec, fingerprint
    from .merge import merge_tiles
    from .runner import TileStore, run_tiles
    from .tiling import TileGrid

    grid = TileGrid(ds.width, ds.height, tile_size=tile_size, overlap=overlap)
    if generator is None:
        generator = GeneratorSpec.create(model, device, dtype, **(generator_options or {}))
    elif generator_options:
        raise GeoError("generator_options only apply when samkit builds the generator (generator=None)")
    store = None
    if checkpoint_dir is None and dst_path is not None:
        checkpoint_dir = dst_path.parent / f".{dst_path.name}.samkit-tiles"
    if checkpoint_dir is not None:
        st = os.stat(spec.path) if os.path.exists(spec.path) else None
        job = {
            "raster": os.path.abspath(spec.path) if st else spec.path,
            "raster_size": st.st_size if st else None,
            "raster_mtime_ns": st.st_mtime_ns if st else None,
            "bands": list(spec.bands),
            "nodata": spec.nodata,
            "stretch": None if spec.stretch is None else [list(v) for v in spec.stretch],
            "grid": [grid.width, grid.height, grid.tile_size, grid.overlap],
            "generator": fingerprint(generator),
        }
        store = TileStore(checkpoint_dir, job, resume=resume)
    try:
        results = run_tiles(grid, spec, generator, store=store, dask=dask, progress=progress)
    except BaseException:
        # a run that failed before its first tile (a model that does not load, a raster that cannot
        # be read) has nothing to resume from: leave no directory behind
        if store is not None and not store.has_results():
            store.remove()
        raise
    objects = merge_tiles(grid, results, iou_thresh=iou_thresh)
    records = [{"score": o.score, "stability_score": o.stability_score, "tile": o.tile, "n_tiles": o.n_tiles}
               for o in objects]
    if names is not None:
        for record, o in zip(records, objects):
            record["label"] = names.get(o.class_id, str(o.class_id))
    return records, [o.geometry for o in objects], store


def _run_prompts(ds, spec, out_crs, transform, prompts, *, prompts_crs, skip_outside, predictor, model, device,
                 dtype, tile_size, progress):
    from collections import Counter

    from tqdm.auto import tqdm

    from . import raster
    from .prompts import load_prompts, plan_windows, split_long_box

    plist = load_prompts(prompts, raster_crs=out_crs, transform=transform, width=ds.width, height=ds.height,
                         prompts_crs=prompts_crs, skip_outside=skip_outside)
    if predictor is None:
        import samkit

        predictor = samkit.Predictor(samkit.get_model(model, device=device, dtype=dtype))
    parts, owner = [], []  # what is asked: prompts, and the parts of long thin boxes
    for k, p in enumerate(plist):
        pieces = split_long_box(p, tile_size)
        parts += pieces
        owner += [k] * len(pieces)
    split = {k for k, n in Counter(owner).items() if n > 1}
    answers: dict[int, tuple] = {}
    pending, size = list(range(len(parts))), tile_size
    bar = tqdm(total=len(parts), desc="prompts", unit="prompt", disable=not progress, dynamic_ncols=True)
    for attempt in range(PROMPT_WINDOW_GROWTH + 1):
        windows = plan_windows([parts[j] for j in pending], ds.width, ds.height, size, read_size=tile_size)
        retry = []
        for win in windows:
            members = [pending[i] for i in win.members]
            image, valid = raster.read_tile(ds, spec, raster.Window(win.c0, win.r0, win.w, win.h),
                                            out_shape=win.out_shape)
            if not valid.any():
                log.warning("prompts %s lie in nodata only; skipped", [parts[j].prompt_id for j in members])
                bar.update(len(members))
                continue
            predictor.set_image(image)
            for j in members:
                answer, cut = _answer_prompt(predictor, parts[j], win, image.shape[:2], valid, ds.width, ds.height)
                if answer is not None:
                    answers[j] = (*answer, win)
                # the mask runs into the window's edge: ask again with a larger window (not a part of a
                # long box, whose mask runs on into the next part's window by design)
                if cut and attempt < PROMPT_WINDOW_GROWTH and owner[j] not in split:
                    retry.append(j)
                else:
                    bar.update(1)
        if not retry:
            break
        pending, size = retry, size * 2
    bar.close()
    by_prompt: dict[int, list] = {}
    for j in sorted(answers):
        by_prompt.setdefault(owner[j], []).append(answers[j])
    records, geoms = [], []
    for k in range(len(plist)):
        got = by_prompt.get(k)
        if not got:
            log.warning("prompt %r gave an empty mask (or only nodata); skipped", plist[k].prompt_id)
            continue
        geom, record = got[0][:2] if len(got) == 1 else _join_parts(got)
        geoms.append(geom)
        records.append(record)
    return records, geoms


def _join_parts(got):
    """One answer from the answers (geometry, record, window) to the parts of a long box: the
    union of their masks, scores weighted by area, the window covering all of theirs."""
    import shapely

    from .tiling import window_name

    geom = shapely.union_all([g for g, _, _ in got])
    w = np.array([g.area for g, _, _ in got])
    w = w / w.sum()
    c0, r0 = min(win.c0 for *_, win in got), min(win.r0 for *_, win in got)
    c1, r1 = max(win.c0 + win.w for *_, win in got), max(win.r0 + win.h for *_, win in got)
    record = dict(got[0][1], score=float(sum(wi * rec["score"] for wi, (_, rec, _) in zip(w, got))),
                  stability_score=float(sum(wi * rec["stability_score"] for wi, (_, rec, _) in zip(w, got))),
                  tile=window_name(c0, r0, c1 - c0, r1 - r0))
    return geom, record


#: how many times a prompt whose mask reaches its window's edge is asked again with a window
#: twice as large (read at the same resolution budget)
PROMPT_WINDOW_GROWTH = 2


def _answer_prompt(predictor, p, win, read_shape, valid, width, height):
    """((geometry in global pixels, record) or None, whether the mask reaches a window edge that
    is not the raster's edge)."""
    from shapely import affinity

    from samkit import Prompt, segment_objects
    from samkit.utils.mask_utils import crop_to_box

    from .merge import trace
    from .tiling import window_name

    fy, fx = read_shape[0] / win.h, read_shape[1] / win.w
    points = (p.points - [win.c0, win.r0]) * [fx, fy] if len(p.points) else None
    box = (p.box - [win.c0, win.r0, win.c0, win.r0]) * [fx, fy, fx, fy] if p.box is not None else None
    [answer] = segment_objects(predictor, [Prompt(points, p.labels if len(p.points) else None, box)])
    found = crop_to_box(answer.mask & valid)
    if found is None:
        return None, False
    (c0, r0, c1, r1), crop = found
    h, w = valid.shape
    cut = ((r0 == 0 and win.r0 > 0) or (c0 == 0 and win.c0 > 0) or (r1 == h and win.r0 + win.h < height)
           or (c1 == w and win.c0 + win.w < width))
    g = trace(crop, r0, c0)
    g = affinity.affine_transform(g, [1 / fx, 0, 0, 1 / fy, win.c0, win.r0])  # read grid -> raster pixels
    record = {"prompt_id": str(p.prompt_id), "score": answer.score, "stability_score": answer.stability_score,
              "tile": window_name(win.c0, win.r0, win.w, win.h)}
    return (g, record), cut


def _valid_polygon(ds, spec, bounds):
    """The valid (non-nodata) area inside a pixel box, as polygons in global pixel coordinates."""
    from . import raster
    from .merge import trace

    c0 = max(0, int(math.floor(bounds[0])))
    r0 = max(0, int(math.floor(bounds[1])))
    c1 = min(ds.width, int(math.ceil(bounds[2])))
    r1 = min(ds.height, int(math.ceil(bounds[3])))
    if c1 <= c0 or r1 <= r0:
        return None, True
    valid = raster.read_valid(ds, spec, raster.Window(c0, r0, c1 - c0, r1 - r0))
    if valid.all():
        return None, True
    return trace(valid, r0, c0), False


def _finish(ds, spec, records, px_geoms, out_crs, transform, columns, *, min_area, simplify, fill_holes,
            regularize):
    """Pixel geometries -> cleaned map geometries with attributes, as a GeoDataFrame."""
    import geopandas as gpd
    from shapely.geometry import Polygon

    from . import polygons, raster

    has_nodata = spec.nodata is not None or raster.nodata_source(ds) != "none"
    pixel_size = math.sqrt(abs(transform.a * transform.e - transform.b * transform.d))
    inv = ~transform
    out_geoms, out_px, keep = [], [], []
    for k, g in enumerate(px_geoms):
        area_px = g.area
        m = polygons.to_map(g, transform)
        if fill_holes:
            m = polygons.fill_holes(m)
        if regularize:
            m = polygons.regularize(m, simplify if simplify > 0 else pixel_size)
        elif simplify:
            m = polygons.simplify(m, simplify)
        changed = fill_holes or regularize or simplify
        if changed and has_nodata:  # outlines moved: cut them back out of nodata
            vpoly, all_valid = _valid_polygon(ds, spec, polygons.to_map(m, inv).buffer(1).bounds)
            if not all_valid:
                m = m.intersection(polygons.to_map(vpoly, transform)) if vpoly is not None else Polygon()
        if changed:
            m = polygons.make_valid(m)
        if m.is_empty:
            continue
        records[k]["area_px"] = float(area_px)
        out_geoms.append(m)
        out_px.append(g if not changed else polygons.to_map(m, inv))
        keep.append(k)
    areas = polygons.areas_m2(out_geoms, out_crs) if out_crs is not None else np.array(
        [g.area for g in out_geoms])  # pixel space: pixels
    rows = []
    geoms, pxs = [], []
    for k, g, gp, a in zip(keep, out_geoms, out_px, areas):
        if min_area and a < min_area:
            continue
        rec = dict(records[k])
        rec["area_m2"] = float(a) if out_crs is not None else float("nan")
        rows.append(rec)
        geoms.append(g)
        pxs.append(gp)
    for i, rec in enumerate(rows, start=1):
        rec["id"] = i
    gdf = gpd.GeoDataFrame(
        {c: [r.get(c) for r in rows] for c in columns},
        geometry=gpd.GeoSeries(geoms, crs=out_crs) if geoms else gpd.GeoSeries([], crs=out_crs),
        crs=out_crs,
    )
    # every column typed explicitly: an empty layer (allow_empty) has the same schema as a full one
    gdf = gdf.astype({c: t for c, t in COLUMN_TYPES.items() if c in gdf.columns})
    return gdf, pxs


def info(src, *, tile_size: int = 1024, overlap: int | None = None, bands=None, stats: bool = False) -> dict:
    """What ``vectorize`` would see: size, CRS, bands, dtype, nodata, tiles (and the stretch)."""
    from . import raster
    from .tiling import TileGrid

    ds = raster.open_raster(src)
    try:
        crs = raster.to_pyproj(ds.crs) if ds.crs else None
        sel = raster.check_bands(ds, bands)
        grid = TileGrid(ds.width, ds.height, tile_size=tile_size, overlap=overlap)
        units = None
        if crs is not None and crs.axis_info:
            units = crs.axis_info[0].unit_name
        b = ds.bounds
        out = {
            "path": ds.name,
            "driver": ds.driver,
            "width": ds.width,
            "height": ds.height,
            "bands": ds.count,
            "dtypes": list(ds.dtypes),
            "colorinterp": [c.name for c in ds.colorinterp],
            "crs": raster.describe_crs(ds.crs),
            "crs_wkt": crs.to_wkt() if crs is not None else None,
            "epsg": crs.to_epsg() if crs is not None else None,
            "units": units,
            "pixel_size": list(ds.res),
            "bounds": [b.left, b.bottom, b.right, b.top],
            "nodata": ds.nodata,
            "nodata_source": raster.nodata_source(ds),
            "block_shape": list(ds.block_shapes[0]),
            "overviews": ds.overviews(1),
            "default_bands": list(sel),
            "tile_size": grid.tile_size,
            "overlap": grid.overlap,
            "tiles": len(grid),
            "tile_grid": list(grid.shape),
        }
        if crs is not None:
            try:
                from rasterio.warp import transform_bounds

                out["bounds_wgs84"] = list(transform_bounds(ds.crs, "EPSG:4326", *b))
            except Exception:  # pragma: no cover - CRS PROJ cannot invert
                out["bounds_wgs84"] = None
        if stats:
            spec = raster.RasterSpec(path=ds.name, bands=sel, width=ds.width, height=ds.height)
            out["stretch"] = raster.compute_stretch(ds, spec, "auto")
    finally:
        if ds is not src:
            ds.close()
    return out


def format_info(d: dict) -> str:
    lines = [
        f"{d['path']} ({d['driver']})",
        f"  size:      {d['width']} x {d['height']} px, {d['bands']} band(s) {', '.join(sorted(set(d['dtypes'])))}",
        f"  bands:     {', '.join(f'{i + 1}:{c}' for i, c in enumerate(d['colorinterp']))}"
        f" (default selection {','.join(map(str, d['default_bands']))})",
        f"  crs:       {d['crs']}" + (f", units {d['units']}" if d.get("units") else ""),
        f"  pixel:     {d['pixel_size'][0]:.6g} x {d['pixel_size'][1]:.6g}",
        f"  bounds:    {', '.join(f'{v:.6g}' for v in d['bounds'])}",
    ]
    if d.get("bounds_wgs84"):
        lines.append(f"  wgs84:     {', '.join(f'{v:.6f}' for v in d['bounds_wgs84'])}")
    nod = d["nodata_source"]
    lines.append(f"  nodata:    {nod}" + (f" ({d['nodata']})" if nod == "value" else ""))
    lines.append(f"  blocks:    {d['block_shape'][0]} x {d['block_shape'][1]}, overviews {d['overviews'] or 'none'}")
    lines.append(f"  tiles:     {d['tiles']} ({d['tile_grid'][0]} x {d['tile_grid'][1]}) of {d['tile_size']} px,"
                 f" overlap {d['overlap']} px")
    if "stretch" in d:
        s = d["stretch"]
        lines.append("  stretch:   " + ("none (uint8 passes through)" if s is None else
                                        "; ".join(f"{lo:.6g}..{hi:.6g}" for lo, hi in s)))
    return "\n".join(lines)


__all__ = ["vectorize", "info", "format_info"]
