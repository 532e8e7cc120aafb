"""Vectorise a georeferenced raster end to end and draw the polygons over the image.

    python examples/geo_vectorize.py scene.tif -o objects.gpkg --png overlay.png
    python examples/geo_vectorize.py scene.tif --model /path/to/mobile_sam.pt --tile-size 512
    # without model weights: rasterise known footprints as colours and vectorise those instead,
    # to see the tiling and cross-tile merging at work
    python examples/geo_vectorize.py scene.tif --footprints buildings.geojson --tile-size 256

Needs the geo extra: pip install "samkit[geo]". The PNG shows the (stretched) image read at
reduced resolution, every polygon outlined in its own colour, and the tile grid in grey.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import samkit.geo as sg
from samkit.geo import raster as georaster
from samkit.geo.polygons import polygons_of, to_map
from samkit.options import add_generator_arguments, generator_arguments

GENERATOR_OPTIONS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh")


def footprint_label_raster(src: Path, footprints: Path, out: Path) -> Path:
    """The raster's grid with each footprint painted in its own colour (for LabelSegmenter)."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    with rasterio.open(src) as ds:
        profile = dict(driver="GTiff", width=ds.width, height=ds.height, count=3, dtype="uint8", crs=ds.crs,
                       transform=ds.transform, tiled=True, compress="deflate")
        transform, shape = ds.transform, (ds.height, ds.width)
    fp = gpd.read_file(footprints).to_crs(profile["crs"].to_wkt())
    codes = [(k + 1) * 2654435761 % (1 << 24) or 1 for k in range(len(fp))]
    img = rasterize(zip(fp.geometry.make_valid(), codes), out_shape=shape, transform=transform, dtype="uint32")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.stack([img & 255, (img >> 8) & 255, (img >> 16) & 255]).astype(np.uint8))
    return out


def draw_overlay(src: Path, gdf, png: Path, *, tile_size: int, overlap: int | None, bands=None, max_side: int = 1600):
    """Stretched image (decimated read) + polygon outlines + tile grid -> PNG."""
    ds, spec, crs, transform = georaster.prepare(src, bands=bands)
    try:
        f = min(1.0, max_side / max(ds.width, ds.height))
        shape = (max(1, round(ds.height * f)), max(1, round(ds.width * f)))
        rgb, valid = georaster.read_tile(ds, spec, georaster.Window(0, 0, ds.width, ds.height), out_shape=shape)
        grid = sg.TileGrid(ds.width, ds.height, tile_size, overlap)
    finally:
        ds.close()
    img = Image.fromarray(rgb).convert("RGBA")
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    sx, sy = shape[1] / grid.width, shape[0] / grid.height
    for t in grid.tiles:  # tile windows
        draw.rectangle([t.c0 * sx, t.r0 * sy, t.c1 * sx - 1, t.r1 * sy - 1], outline=(200, 200, 200, 120))
    to_pixels = ~transform
    rng = np.random.default_rng(0)
    geoms = gdf.to_crs(crs).geometry if gdf.crs is not None and crs is not None else gdf.geometry
    for geom in geoms:
        colour = tuple(int(v) for v in rng.integers(80, 256, 3))
        for poly in polygons_of(to_map(geom, to_pixels)):
            ring = [(x * sx, y * sy) for x, y in poly.exterior.coords]
            draw.polygon(ring, fill=colour + (60,), outline=colour + (255,))
            for hole in poly.interiors:
                draw.line([(x * sx, y * sy) for x, y in hole.coords], fill=colour + (255,))
    Image.alpha_composite(img, layer).convert("RGB").save(png)
    return png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raster")
    p.add_argument("-o", "--output", default=None, help="vector output (default: <raster>.gpkg beside the PNG)")
    p.add_argument("--png", default=None, help="overlay PNG (default: <output>.png)")
    p.add_argument("--model", default=None, help="model name or checkpoint path (default: $SAMKIT_CHECKPOINT, else "
                                                 "$SAMKIT_MODEL, else mobile_sam)")
    add_generator_arguments(p, GENERATOR_OPTIONS, old_flags={"--stability-thresh": "stability_score_thresh"})
    p.add_argument("--footprints", help="vector file of known footprints: vectorise them (no model needed)")
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=None, help="default 128, a quarter of tiles under 512")
    p.add_argument("--bands", default=None)
    p.add_argument("--simplify", type=float, default=0.0)
    p.add_argument("--regularize", action="store_true")
    args = p.parse_args(argv)

    src = Path(args.raster)
    out = Path(args.output) if args.output else Path(f"{src.stem}.gpkg")
    png = Path(args.png) if args.png else out.with_suffix(".png")
    kwargs = dict(tile_size=args.tile_size, overlap=args.overlap, bands=args.bands, simplify=args.simplify,
                  regularize=args.regularize, overwrite=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.footprints:
            from samkit.geo.testing import LabelSegmenter

            labels = footprint_label_raster(src, Path(args.footprints), Path(tmp) / "labels.tif")
            gdf = sg.vectorize(labels, out, generator=LabelSegmenter(), **kwargs)
        else:
            options = generator_arguments(args, GENERATOR_OPTIONS)
            gdf = sg.vectorize(src, out, model=args.model, generator_options=options, **kwargs)
    draw_overlay(src, gdf, png, tile_size=args.tile_size, overlap=args.overlap,
                 bands=None if args.footprints else args.bands)
    crossing = int((gdf["n_tiles"] > 1).sum())
    print(f"{len(gdf)} polygons ({crossing} joined across tile borders) -> {out}; overlay -> {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
