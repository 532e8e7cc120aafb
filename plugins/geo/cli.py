"""``samkit geo ...`` commands: vectorize, prompt, info.

Imports only the standard library at import time (the ``samkit`` CLI discovers this module
whether or not the geo extra is installed); the work is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys

from samkit.options import add_generator_arguments, generator_arguments, whole_number

GEO_MODULES = {"rasterio", "geopandas", "shapely", "pyproj", "pyogrio", "affine", "pyarrow"}
#: the samkit.GeneratorOptions settings `vectorize` takes as flags (--points-per-side, ...)
GENERATOR_OPTIONS = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                     "min_mask_region_area")


def _common_raster(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("raster")
    g.add_argument("--bands", help="1-based bands to use: one (grey) or three as R,G,B, e.g. 3,2,1"
                                   " (default: RGB by colour interpretation, else the first three, else band 1)")
    g.add_argument("--stretch", default="auto",
                   help="auto (default: uint8 as is, other types 2-98 percentile), none, minmax, 'PLOW,PHIGH'"
                        " percentiles, or values 'v:LO,HI' applied to every band; computed once for the"
                        " whole raster from its overviews or a sample, excluding nodata")
    g.add_argument("--nodata", type=float, help="nodata value overriding the raster's own")
    g.add_argument("--crs", help="assign this CRS to a raster that has none (EPSG:xxxx, WKT or PROJ); a raster "
                                 "with another CRS is refused (use --to-crs)")
    g.add_argument("--pixel-space", action="store_true",
                   help="write polygons in pixel coordinates (x = column, y = row) without a CRS")


def _common_output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-o", "--output", required=True,
                   help="output file; format by extension: .gpkg, .geojson, .shp, .fgb, .parquet")
    g.add_argument("--layer", help="layer name (default the file name); in an existing GeoPackage (with "
                                   "--overwrite) only this layer is replaced, the others stay")
    g.add_argument("--min-area", type=float, default=0.0, help="drop objects smaller than this, in m^2"
                   " (pixels with --pixel-space)")
    g.add_argument("--simplify", type=float, default=0.0, help="simplification tolerance in map units")
    g.add_argument("--fill-holes", action="store_true", help="remove holes from polygons")
    g.add_argument("--regularize", action="store_true",
                   help="orthogonal outlines (buildings): right-angled, aligned to the dominant direction")
    g.add_argument("--to-crs", help="reproject the output to this CRS (areas stay true m^2)")
    g.add_argument("--id-raster", help="also write a GeoTIFF of instance ids on the raster's grid")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g.add_argument("--allow-empty", action="store_true", help="write an empty layer instead of failing"
                   " when nothing is found")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="mobile_sam, vit_b, vit_l, vit_h or a checkpoint path (default: "
                                   "$SAMKIT_CHECKPOINT, else $SAMKIT_MODEL, else mobile_sam)")
    g.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: $SAMKIT_DEVICE, else the best available)")
    g.add_argument("--dtype", help="float32, bfloat16 or float16 (default: $SAMKIT_DTYPE, else float32)")


def add_commands(subparsers) -> None:
    geo = subparsers.add_parser("geo", help="segment GIS rasters into georeferenced polygons",
                                description="Segment rasters of any size into georeferenced vector polygons.")
    sub = geo.add_subparsers(dest="geo_command", metavar="{vectorize,prompt,info,finetune}")
    sub.required = True

    v = sub.add_parser("vectorize", help="segment everything, tile by tile, and write polygons",
                       description="Segment everything in RASTER tile by tile; objects crossing tile borders"
                                   " come out as one polygon.")
    v.add_argument("raster")
    _common_output(v)
    _common_raster(v)
    t = v.add_argument_group("tiling")
    t.add_argument("--tile-size", type=int, default=1024, help="tile size in pixels (default 1024)")
    t.add_argument("--overlap", type=int, default=None,
                   help="tile overlap in pixels (default 128, a quarter of tiles under 512)")
    t.add_argument("--iou-thresh", type=_fraction, default=0.5,
                   help="IoU inside a tile overlap above which two pieces are one object (default 0.5)")
    _model(v)
    m = v.add_argument_group("segment everything (samkit.MaskGenerator)")
    add_generator_arguments(m, GENERATOR_OPTIONS, old_flags={"--stability-thresh": "stability_score_thresh"})
    m.add_argument("--generator", metavar="MODULE:NAME",
                   help="use another segmenter: a class or factory (called without arguments) whose object has"
                        " generate(image) -> MaskGenerator records, e.g. samkit.geo.testing:LabelSegmenter")
    x = v.add_argument_group("text prompts (segment what words name, not everything)")
    x.add_argument("--text", help="phrases to find, separated by '.', e.g. 'building' or 'building. tree.': a text"
                                  " detector finds their boxes in each tile and SAM segments them; a 'label'"
                                  " column names each object's phrase")
    x.add_argument("--det-model", help="the text detector: a GroundingDINO or OWLv2 Hugging Face id or a local"
                                       " folder (default IDEA-Research/grounding-dino-tiny)")
    x.add_argument("--box-threshold", type=_fraction, default=0.25, help="detector box score threshold (0.25)")
    x.add_argument("--text-threshold", type=_fraction, default=0.25,
                   help="matched phrase score threshold (GroundingDINO; 0.25)")
    r = v.add_argument_group("large jobs")
    r.add_argument("--dask", help="run tiles on Dask: a scheduler address (tcp://host:8786) or a number of"
                                  " local worker processes")
    r.add_argument("--checkpoint-dir", help="where per-tile results are kept (default: next to the output)")
    r.add_argument("--no-resume", action="store_true", help="ignore results of an interrupted earlier run")
    r.add_argument("--keep-checkpoints", action="store_true", help="keep per-tile results after success")
    v.set_defaults(func=_vectorize)

    p = sub.add_parser("prompt", help="segment at points/boxes given in map coordinates",
                       description="Answer point/box prompts in map coordinates; each prompt is answered"
                                   " from a window centred on it.")
    p.add_argument("raster")
    src = p.add_argument_group("prompts")
    src.add_argument("--points", action="append", default=[], metavar="FILE",
                     help="vector file of Points (optional columns label 1/0, prompt_id); any CRS")
    src.add_argument("--boxes", action="append", default=[], metavar="FILE",
                     help="vector file of Polygons whose extents are box prompts; any CRS")
    src.add_argument("--point", nargs=2, type=float, action="append", default=[], metavar=("X", "Y"),
                     help="a point prompt (repeatable); needs --prompt-crs")
    src.add_argument("--box", nargs=4, type=float, action="append", default=[],
                     metavar=("XMIN", "YMIN", "XMAX", "YMAX"), help="a box prompt (repeatable); needs --prompt-crs")
    src.add_argument("--prompt-crs", help="CRS of --point/--box, or overriding the files' CRS"
                                          " (EPSG:4326, ..., or 'raster')")
    src.add_argument("--skip-outside", action="store_true", help="drop prompts outside the raster instead of"
                                                                   " failing")
    src.add_argument("--window-size", type=whole_number(1), default=1024,
                     help="window read around prompts (default 1024)")
    _common_output(p)
    _common_raster(p)
    _model(p)
    p.set_defaults(func=_prompt)

    i = sub.add_parser("info", help="what vectorize would see: size, CRS, bands, nodata, tiles")
    i.add_argument("raster")
    i.add_argument("--tile-size", type=int, default=1024)
    i.add_argument("--overlap", type=int, default=None)
    i.add_argument("--bands")
    i.add_argument("--stats", action="store_true", help="also compute the global stretch")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=_info)

    from .finetune_cli import add_command as add_finetune

    add_finetune(sub, _common_raster, _model)


def _api():
    try:
        from . import api
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in GEO_MODULES:
            from .errors import GeoError

            raise GeoError(f'the geo commands need the geo extra ({exc.name} is missing): pip install "samkit[geo]"'
                           ) from exc
        raise
    return api


def _load_object(spec: str):
    import importlib

    from .errors import GeoError

    module, _, name = spec.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in name.split(".") if name else []:
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise GeoError(f"--generator {spec}: cannot import it ({exc}); give MODULE:NAME") from exc
    if not name or not callable(obj):
        raise GeoError(f"--generator {spec}: give MODULE:NAME of a class or factory")
    return obj


def _make_generator(spec: str):
    """--generator MODULE:NAME, called without arguments."""
    from .errors import GeoError

    factory = _load_object(spec)
    try:
        return factory()
    except TypeError as exc:
        raise GeoError(f"--generator {spec}: calling it without arguments failed ({exc}); give a class or a "
                       "factory that needs none and returns an object with generate(image)") from None


def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value:g}")
    return value


def _stretch(value: str):
    if value.startswith("v:"):
        from .errors import GeoError

        try:
            nums = [float(x) for x in value[2:].split(",")]
        except ValueError:
            raise GeoError(f"--stretch v: needs numbers, LO,HI per band, got {value!r}") from None
        if len(nums) % 2:
            raise GeoError(f"--stretch v: needs LO,HI pairs, got {value!r}")
        pairs = [tuple(nums[k:k + 2]) for k in range(0, len(nums), 2)]
        return pairs[0] if len(pairs) == 1 else pairs
    return value


def _raster_kwargs(args) -> dict:
    stretch = _stretch(args.stretch)
    if isinstance(stretch, tuple):  # explicit values for every band
        stretch = [stretch]
    return dict(bands=args.bands, stretch=stretch, nodata=args.nodata, crs=args.crs, pixel_space=args.pixel_space)


def _output_kwargs(args) -> dict:
    return dict(layer=args.layer, min_area=args.min_area, simplify=args.simplify, fill_holes=args.fill_holes,
                regularize=args.regularize, to_crs=args.to_crs, id_raster=args.id_raster, overwrite=args.overwrite,
                allow_empty=args.allow_empty, progress=not args.quiet)


def _report(gdf, args) -> None:
    from .raster import crs_label

    where = "pixel coordinates" if gdf.crs is None else crs_label(gdf.crs)
    print(f"wrote {len(gdf)} polygon(s) to {args.output} ({where})")
    if args.id_raster:
        print(f"wrote instance ids to {args.id_raster}")


def _vectorize(args) -> int:
    api = _api()
    opts = generator_arguments(args, GENERATOR_OPTIONS)
    dask = args.dask
    if dask is not None and dask.isdigit():
        dask = int(dask)
    generator = None
    if args.generator:
        generator, opts = _make_generator(args.generator), None
    gdf = api.vectorize(args.raster, args.output, generator=generator, model=args.model, device=args.device,
                        dtype=args.dtype, generator_options=opts, text=args.text, det_model=args.det_model,
                        box_threshold=args.box_threshold, text_threshold=args.text_threshold,
                        tile_size=args.tile_size, overlap=args.overlap, iou_thresh=args.iou_thresh, dask=dask,
                        checkpoint_dir=args.checkpoint_dir, resume=not args.no_resume,
                        keep_checkpoints=args.keep_checkpoints, **_raster_kwargs(args), **_output_kwargs(args))
    _report(gdf, args)
    return 0


def _prompt(args) -> int:
    from .errors import GeoError

    api = _api()
    sources = list(args.points) + list(args.boxes)
    if args.point or args.box:
        if not args.prompt_crs:
            raise GeoError("--point/--box coordinates need their CRS: add --prompt-crs (e.g. EPSG:4326, or 'raster'"
                           " for the raster's CRS)")
        sources.append({"points": args.point, "boxes": args.box, "crs": args.prompt_crs})
    if not sources:
        raise GeoError("no prompts: give --points FILE, --boxes FILE, --point X Y or --box XMIN YMIN XMAX YMAX")
    gdf = api.vectorize(args.raster, args.output, prompts=sources if len(sources) > 1 else sources[0],
                        prompts_crs=args.prompt_crs if (args.points or args.boxes) else None,
                        skip_outside=args.skip_outside, model=args.model, device=args.device, dtype=args.dtype,
                        tile_size=args.window_size, **_raster_kwargs(args), **_output_kwargs(args))
    _report(gdf, args)
    return 0


def _info(args) -> int:
    api = _api()
    d = api.info(args.raster, tile_size=args.tile_size, overlap=args.overlap, bands=args.bands, stats=args.stats)
    if args.json:
        json.dump(d, sys.stdout, indent=2, default=str)
        print()
    else:
        print(api.format_info(d))
    return 0
