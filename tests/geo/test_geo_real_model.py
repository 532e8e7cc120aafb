"""Every real raster end to end with the real (seeded-random) MobileSAM, segment-everything and
prompts: valid polygons, in the raster's CRS, inside its bounds, outside nodata.

Random weights make degenerate masks (large blobs); the thresholds are 0 so that the model's
masks reach the output, and the grid is small (4 x 4 points) to keep the suite fast (the
decoder costs about as much per point prompt as a twentieth of the encoder). What is
checked is the pipeline around the model, with real model output flowing through it.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from geo_helpers import ALL_RASTERS, KAMPALA
from rasterio.features import rasterize

import samkit
import samkit.geo as sg
from samkit.geo.raster import apply_affine

OPTIONS = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


@pytest.fixture(scope="module")
def model(mobile_sam_checkpoint):
    return samkit.load_model(str(mobile_sam_checkpoint), device="cpu")


@pytest.fixture(scope="module")
def generator(model):
    return samkit.MaskGenerator(model, **OPTIONS)


def _valid_mask(ds, bands):
    """GDAL's rule: a pixel has data when any selected band has."""
    return np.any(ds.read_masks(list(bands)) > 0, axis=0)


def _check_output(raster, gdf, bands=None):
    with rasterio.open(raster) as ds:
        transform, shape = ds.transform, (ds.height, ds.width)
        xs, ys = apply_affine(transform, [0, ds.width, ds.width, 0], [0, 0, ds.height, ds.height])
        footprint = shapely.Polygon(list(zip(xs, ys)))  # rotation-aware outline of the raster
        valid = _valid_mask(ds, bands or sg.info(raster)["default_bands"])
        assert gdf.crs == pyproj.CRS.from_wkt(ds.crs.to_wkt())
    assert len(gdf) >= 1
    assert gdf.geometry.is_valid.all() and not gdf.geometry.is_empty.any()
    assert set(gdf.geometry.geom_type) <= {"Polygon", "MultiPolygon"}
    pixel = abs(transform.a) + abs(transform.b)
    assert footprint.buffer(pixel * 1e-6).contains(shapely.union_all(list(gdf.geometry)))
    covered = rasterize(((g, 1) for g in gdf.geometry), out_shape=shape, transform=transform,
                        dtype="uint8").astype(bool)
    assert covered.any() and not (covered & ~valid).any(), "a polygon reaches into nodata"
    assert np.isfinite(gdf["score"]).all() and np.isfinite(gdf["stability_score"]).all()
    assert (gdf["area_m2"] > 0).all() and np.isfinite(gdf["area_m2"]).all()


@pytest.mark.parametrize("name", ALL_RASTERS)
def test_every_real_raster_end_to_end(name, geo_dir, generator, tmp_path):
    raster = geo_dir / name
    out = tmp_path / "out.gpkg"
    gdf = sg.vectorize(raster, out, generator=generator, progress=False)
    _check_output(raster, gdf)
    back = gpd.read_file(out)
    assert len(back) == len(gdf) and back.crs == gdf.crs


def test_real_model_across_tiles_with_band_choice_and_simplify(geo_dir, generator, tmp_path):
    """The 8-band Sentinel-2 scene in two tiles with its second date's R,G,B (bands 5,6,7) and a
    16-bit stretch; the alpha-masked drone scene in two tiles, simplified (outlines moved by
    simplification are cut back out of nodata)."""
    drone = geo_dir / "riotiler__pix4d_alpha_nodata.tif"
    gdf = sg.vectorize(drone, None, generator=generator, tile_size=700, overlap=64, simplify=1.0, progress=False)
    _check_output(drone, gdf)
    s2 = geo_dir / "ftw__inference-img.tif"
    gdf = sg.vectorize(s2, None, generator=generator, bands=(5, 6, 7), tile_size=384, overlap=48, progress=False)
    _check_output(s2, gdf, bands=(5, 6, 7))
    assert set(gdf["tile"]) <= {"x0y0w384h379", "x194y0w384h379"}  # the two tiles' windows


def test_real_predictor_prompts(geo_dir, model, tmp_path):
    raster = geo_dir / KAMPALA
    with rasterio.open(raster) as ds:
        b = ds.bounds
    pts = [shapely.Point(b.left + f * (b.right - b.left), b.bottom + g * (b.top - b.bottom))
           for f, g in [(0.3, 0.3), (0.7, 0.6), (0.98, 0.5)]]
    prompts = gpd.GeoDataFrame({"label": [1, 1, 1]}, geometry=pts, crs="EPSG:3857").to_crs("EPSG:4326")
    f = tmp_path / "points.geojson"
    prompts.to_file(f)
    box = {"boxes": [[b.left + 10, b.bottom + 10, b.left + 40, b.bottom + 30]], "crs": "EPSG:3857"}
    predictor = samkit.Predictor(model)
    gdf = sg.vectorize(raster, tmp_path / "p.gpkg", prompts=[f, box], predictor=predictor, progress=False)
    _check_output(raster, gdf)
    assert set(gdf["prompt_id"]) <= {"0:0", "0:1", "0:2", "1:b0"} and len(gdf) >= 3
    assert predictor.encoder_calls == 1  # all prompts fit one window of the 1024 px scene: one embedding


def test_cli_builds_the_model(geo_dir, mobile_sam_checkpoint, tmp_path, capsys):
    """`samkit geo vectorize/prompt` with --model: the generator/predictor samkit builds itself."""
    from samkit.cli import main

    raster = geo_dir / "rasterio__float_raster_with_nodata.tif"
    out = tmp_path / "o.parquet"
    rc = main(["geo", "vectorize", str(raster), "-o", str(out), "--model", str(mobile_sam_checkpoint),
               "--device", "cpu", "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-thresh", "0",
               "-q"])
    assert rc == 0, capsys.readouterr().err
    gdf = gpd.read_parquet(out)
    _check_output(raster, gdf)
    assert gdf.crs.to_epsg() is None  # IGNF:ETRS89LAEA has no EPSG code; kept as the raster's CRS
    with rasterio.open(raster) as ds:
        cx, cy = (ds.bounds.left + ds.bounds.right) / 2, (ds.bounds.bottom + ds.bounds.top) / 2
    pts = tmp_path / "pts.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.Point(cx - 600, cy + 400)], crs=gdf.crs).to_file(pts)
    rc = main(["geo", "prompt", str(raster), "-o", str(tmp_path / "p.gpkg"), "--model", str(mobile_sam_checkpoint),
               "--device", "cpu", "--points", str(pts), "--point", str(cx), str(cy), "--prompt-crs", "raster", "-q"])
    assert rc == 0, capsys.readouterr().err
    prompted = gpd.read_file(tmp_path / "p.gpkg")
    _check_output(raster, prompted)
    assert set(prompted["prompt_id"]) <= {"0:0", "1:p0"}


def test_dask_workers_build_the_model_and_agree(geo_dir, generator, mobile_sam_checkpoint):
    """dask=2: two local worker processes each load the checkpoint once and segment their tiles;
    the result matches one process (masks may differ in a boundary pixel: float sums in another
    thread count)."""
    raster = geo_dir / "ftw__inference-img.tif"  # two tiles of 384 px
    single = sg.vectorize(raster, None, generator=generator, tile_size=384, overlap=48, progress=False)
    dask = sg.vectorize(raster, None, model=str(mobile_sam_checkpoint), device="cpu", generator_options=OPTIONS,
                        tile_size=384, overlap=48, dask=2, progress=False)
    _check_output(raster, dask)
    assert len(dask) == len(single) and list(dask["tile"]) == list(single["tile"])
    for a, b in zip(dask.geometry, single.geometry):
        assert a.intersection(b).area / a.union(b).area > 0.999
    assert np.allclose(dask["score"], single["score"], atol=1e-4)
