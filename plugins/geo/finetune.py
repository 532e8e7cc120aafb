"""Fine-tuning on a raster and a vector file of objects: `samkit geo finetune scene.tif --labels
buildings.gpkg -o tuned.pt`.

Format translation only: the raster is cut into tiles with the GIS tiling (windowed reads, the
global stretch, nodata black), each label polygon is reprojected to the raster's CRS and
rasterised into every tile it reaches, and each tile becomes one samkit.finetune LabelledImage
whose pixels are read when training needs them. samkit.finetune does the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import GeoError

MIN_PIXELS = 16  # a label's part in a tile smaller than this is left out (a sliver along the border)


def training_tiles(raster, labels, *, layer: str | None = None, class_field: str | None = None,
                   classes=None, tile_size: int = 1024, overlap: int = 0, min_pixels: int = MIN_PIXELS,
                   bands=None, stretch="auto", nodata=None, crs=None):
    """A raster and a vector file (any format GDAL reads; `layer` for a multi-layer file) ->
    LabelledImages, one per tile that holds a label, with the label's `class_field` value as its
    class (`classes`: the values to keep). Labels outside the raster are ignored; tiles are
    `tile_size` pixels with `overlap` (0 by default: each pixel of a label is trained on once).
    The raster options are those of vectorize."""
    import geopandas as gpd
    from rasterio.features import rasterize
    from rasterio.windows import transform as window_transform
    from shapely.geometry import box

    from samkit.finetune import LabelledImage, object_from_mask

    from .raster import open_raster, prepare, read_tile, read_valid
    from .tiling import TileGrid

    ds, spec, raster_crs, transform = prepare(raster, bands=bands, nodata=nodata, stretch=stretch, crs=crs)
    try:
        if raster_crs is None:
            raise GeoError(f"{raster}: the raster has no CRS, so the labels cannot be placed on it; give --crs")
        path = Path(os.fspath(labels))
        try:
            frame = gpd.read_file(path, layer=layer) if layer else gpd.read_file(path)
        except Exception as exc:
            raise GeoError(f"{labels}: cannot read the labels ({str(exc).splitlines()[0]})") from None
        if frame.crs is None:
            raise GeoError(f"{labels}: the labels have no CRS; set one (e.g. ogr2ogr -a_srs EPSG:4326)")
        if class_field is not None and class_field not in frame.columns:
            raise GeoError(f"{labels}: no field {class_field!r}; the fields are: "
                           f"{', '.join(c for c in frame.columns if c != 'geometry')}")
        kinds = set(frame.geometry.geom_type.dropna())
        if not kinds <= {"Polygon", "MultiPolygon"}:
            raise GeoError(f"{labels}: fine-tuning needs polygons, the file has {', '.join(sorted(kinds))}")
        frame = frame[~frame.geometry.is_empty & frame.geometry.notna()].to_crs(raster_crs)
        frame["geometry"] = frame.geometry.make_valid()
        where = Path(str(spec.path)).name
        grid = TileGrid(spec.width, spec.height, tile_size, overlap)
        index = frame.sindex
        records = []
        for tile in grid.tiles:
            tile_transform = window_transform(tile.window, transform)
            height, width = tile.shape
            corners = [tile_transform * (0, 0), tile_transform * (width, height)]
            (x0, y0), (x1, y1) = corners
            hits = index.query(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
            if len(hits) == 0:
                continue
            valid = read_valid(ds, spec, tile.window)
            objects = []
            for i in sorted(hits):
                row = frame.iloc[i]
                mask = rasterize([row.geometry], out_shape=(height, width), transform=tile_transform,
                                 dtype="uint8").astype(bool) & valid
                if mask.sum() < min_pixels:
                    continue
                label = None if class_field is None else str(row[class_field])
                objects.append(object_from_mask(mask, label, f"feature {frame.index[i]}",
                                                f"{where}: tile {tile.name}"))
            if not objects:
                continue

            def read(window=tile.window, spec=spec):
                with open_raster(spec.path) as source:
                    return read_tile(source, spec, window)[0]

            records.append(LabelledImage(read, tuple(objects), f"{where}: tile {tile.name}", (height, width)))
        if not records:
            raise GeoError(f"{labels}: no label polygon covers {min_pixels} or more pixels of {raster} (are they "
                           "of this area?)")
        from samkit.finetune import select_classes

        return select_classes(records, classes, str(labels))
    finally:
        if ds is not raster:
            ds.close()


def finetune(raster, labels, output, *, model="mobile_sam", layer=None, class_field=None, classes=None,
             tile_size: int = 1024, overlap: int = 0, val_labels=None, bands=None, stretch="auto", nodata=None,
             crs=None, **options):
    """Fine-tune `model` on a raster's labelled objects and write `output` (samkit.finetune's
    outputs and options). `val_labels`: a second vector file for validation (default: a share of
    the tiles is held out)."""
    from samkit.finetune import finetune as run

    tiles = dict(layer=layer, class_field=class_field, classes=classes, tile_size=tile_size, overlap=overlap,
                 bands=bands, stretch=stretch, nodata=nodata, crs=crs)
    train = training_tiles(raster, labels, **tiles)
    val = training_tiles(raster, val_labels, **tiles) if val_labels is not None else None
    return run(model, train, output, val, **options)
