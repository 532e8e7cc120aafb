"""Prompts in map coordinates: any CRS, boxes, windows centred on prompts, CRS mistakes."""

from __future__ import annotations

import re

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from geo_helpers import FloodPredictor, match_polygons, reference_regions
from shapely.geometry import Point

import samkit.geo as sg
from samkit.geo import GeoError
from samkit.geo.prompts import Prompt, plan_windows


@pytest.fixture(scope="module")
def kampala_prompts(kampala_truth):
    path, codes, transform, crs, _ = kampala_truth
    regions = [g for g, _ in reference_regions(codes, transform) if g.area > 2.0]  # > ~350 px
    pts = gpd.GeoDataFrame({"name": [f"b{k}" for k in range(len(regions))]},
                           geometry=[r.representative_point() for r in regions], crs=crs.to_wkt())
    return path, regions, pts


def _window(tile: str):
    x, y, w, h = (int(v) for v in re.match(r"x(\d+)y(\d+)w(\d+)h(\d+)", tile).groups())
    return x, y, w, h


def test_point_file_in_another_crs(kampala_prompts, tmp_path):
    path, regions, pts = kampala_prompts
    f = tmp_path / "points.geojson"
    pts.to_crs("EPSG:4326").to_file(f)  # lon/lat, reprojected to the raster's Web Mercator by samkit
    pred = FloodPredictor()
    gdf = sg.vectorize(path, tmp_path / "out.gpkg", prompts=f, predictor=pred, tile_size=512, progress=False)
    assert len(gdf) == len(regions) > 40
    assert list(gdf["prompt_id"]) == [str(k) for k in range(len(regions))]
    ious, _ = match_polygons(gdf.geometry, regions)
    assert ious.min() > 0.999
    assert gdf.crs.to_epsg() == 3857
    for rec in pred.calls:
        assert rec["multimask"] and len(rec["points"]) == 1  # a single point asks for three masks
    # nearby prompts share one image embedding
    assert len(pred.images) < len(regions) / 2


def test_window_grows_when_the_object_reaches_its_edge(kampala_prompts):
    """An object larger than the prompt window is asked again with a larger window."""
    path, regions, pts = kampala_prompts
    gdf = sg.vectorize(path, None, prompts=pts, predictor=FloodPredictor(), tile_size=96, progress=False)
    sizes = [_window(t)[2] for t in gdf["tile"]]
    assert max(sizes) > 96 and min(sizes) == 96
    ious, _ = match_polygons(gdf.geometry, regions)
    assert len(gdf) == len(regions) and ious.min() > 0.85  # larger windows are read at reduced resolution
    assert np.median(ious) > 0.95


def test_prompts_are_answered_from_windows_centred_on_them(kampala_prompts):
    path, regions, pts = kampala_prompts
    gdf = sg.vectorize(path, None, prompts=pts, predictor=FloodPredictor(), tile_size=256, progress=False)
    with rasterio.open(path) as ds:
        inv = ~ds.transform
    for (_, row), pt in zip(gdf.iterrows(), pts.geometry):
        x0, y0, w, h = _window(row["tile"])
        col = inv.a * pt.x + inv.b * pt.y + inv.c
        r = inv.d * pt.x + inv.e * pt.y + inv.f
        # at least a quarter tile from every window edge that is not the raster's edge
        assert x0 == 0 or col - x0 >= 64
        assert x0 + w == 1024 or x0 + w - col >= 64
        assert y0 == 0 or r - y0 >= 64
        assert y0 + h == 1024 or y0 + h - r >= 64


def test_plan_windows_share_and_centre():
    prompts = [Prompt(k, points=np.array([[x, y]]), labels=np.array([1])) for k, (x, y) in
               enumerate([(255, 300), (260, 310), (700, 700), (5, 5), (1020, 500)])]
    wins = plan_windows(prompts, 1024, 1024, 256)
    members = sorted(sorted(w.members) for w in wins)
    assert [0, 1] in members  # close prompts share
    for w in wins:
        for k in w.members:
            assert w.fits(prompts[k].points[0].tolist() * 2, 64, 1024, 1024)
    # a box larger than a tile gets a reduced-resolution window around it
    big = [Prompt("big", box=np.array([100.0, 100.0, 900.0, 700.0]))]
    (w,) = plan_windows(big, 1024, 1024, 256)
    assert w.out_shape is not None and max(w.out_shape) == 256
    assert w.c0 <= 100 and w.c0 + w.w >= 900


def test_box_prompts_from_polygons_in_a_utm_crs(kampala_prompts, tmp_path):
    path, regions, _ = kampala_prompts
    boxes = gpd.GeoDataFrame({"prompt_id": [f"r{k}" for k in range(len(regions))]},
                             geometry=[shapely.box(*r.buffer(-0.05).bounds) for r in regions],
                             crs="EPSG:3857").to_crs("EPSG:32636")
    f = tmp_path / "boxes.gpkg"
    boxes.to_file(f)
    pred = FloodPredictor()
    gdf = sg.vectorize(path, None, prompts=f, predictor=pred, tile_size=512, progress=False)
    assert len(gdf) == len(regions)
    assert all(c["box"] is not None and not c["multimask"] for c in pred.calls)
    ious, _ = match_polygons(gdf.geometry, regions)
    assert np.median(ious) > 0.999  # a box's biggest region is its object (a few boxes hold a neighbour more)


def test_grouped_points_with_negative_labels(kampala_prompts):
    path, regions, pts = kampala_prompts
    a, b = pts.geometry.iloc[0], pts.geometry.iloc[1]
    gdf_in = gpd.GeoDataFrame({"prompt_id": ["x", "x"], "label": [1, 0]}, geometry=[a, b], crs=pts.crs)
    pred = FloodPredictor()
    gdf = sg.vectorize(path, None, prompts=gdf_in, predictor=pred, progress=False)
    assert len(gdf) == 1 and list(pred.calls[0]["labels"]) == [1, 0]
    assert not pred.calls[0]["multimask"]
    with pytest.raises(GeoError, match="only negative"):
        sg.vectorize(path, None, prompts=gdf_in.assign(label=[0, 0]), predictor=FloodPredictor(), progress=False)


def test_coordinates_with_their_crs_and_several_sources(kampala_prompts, tmp_path):
    path, regions, pts = kampala_prompts
    ll = pts.to_crs("EPSG:4326").geometry
    src = {"points": [[p.x, p.y] for p in ll[:3]], "crs": "EPSG:4326"}
    gdf = sg.vectorize(path, None, prompts=[src, pts.iloc[3:5]], predictor=FloodPredictor(), progress=False)
    assert list(gdf["prompt_id"]) == ["0:p0", "0:p1", "0:p2", "1:3", "1:4"]
    ious, _ = match_polygons(gdf.geometry, regions[:5])
    assert ious.min() > 0.999
    with pytest.raises(GeoError, match="no CRS"):
        sg.vectorize(path, None, prompts={"points": [[1, 2]]}, predictor=FloodPredictor(), progress=False)


def test_prompt_file_whose_crs_contradicts_its_coordinates(geo_dir, tmp_path):
    """The solaris trap: a GeoJSON without a crs member (so EPSG:4326 by definition) holding
    Albers metres of the raster's custom CRS."""
    raster = geo_dir / "solaris__sample_geotiff_custom_proj.tif"
    labels = geo_dir / "solaris__geotiff_custom_proj_labels.geojson"
    assert gpd.read_file(labels).crs.to_epsg() == 4326
    with pytest.raises(GeoError) as exc:
        sg.vectorize(raster, tmp_path / "o.gpkg", prompts=labels, predictor=FloodPredictor(), progress=False)
    msg = str(exc.value)
    assert "EPSG:4326" in msg and "impossible" in msg and "prompts_crs='raster'" in msg
    assert not (tmp_path / "o.gpkg").exists()
    gdf = sg.vectorize(raster, tmp_path / "o.gpkg", prompts=labels, prompts_crs="raster", predictor=FloodPredictor(),
                       progress=False)
    with rasterio.open(raster) as ds:
        bounds = shapely.box(*ds.bounds)
    assert len(gdf) == 19 and gdf.geometry.within(bounds.buffer(1e-6)).all()
    assert gdf.crs.to_epsg() is None and gdf.crs.name == gpd.read_file(tmp_path / "o.gpkg").crs.name


def test_prompts_outside_the_raster(kampala_prompts, tmp_path):
    path, regions, pts = kampala_prompts
    far = gpd.GeoDataFrame(geometry=[pts.geometry.iloc[0], Point(0, 0)], crs=pts.crs)  # (0, 0): Gulf of Guinea
    with pytest.raises(GeoError, match="1 of 2 prompts.*outside the raster"):
        sg.vectorize(path, tmp_path / "o.gpkg", prompts=far, predictor=FloodPredictor(), progress=False)
    assert not (tmp_path / "o.gpkg").exists()
    gdf = sg.vectorize(path, None, prompts=far, skip_outside=True, predictor=FloodPredictor(), progress=False)
    assert len(gdf) == 1
    with pytest.raises(GeoError, match="none of the prompts"):
        sg.vectorize(path, None, prompts=far.iloc[1:], skip_outside=True, predictor=FloodPredictor(), progress=False)


def test_bad_prompt_geometry_and_files(kampala_prompts, tmp_path):
    path, _, pts = kampala_prompts
    line = gpd.GeoDataFrame(geometry=[shapely.LineString([(0, 0), (1, 1)])], crs=pts.crs)
    with pytest.raises(GeoError, match="LineString"):
        sg.vectorize(path, None, prompts=line, predictor=FloodPredictor(), progress=False)
    with pytest.raises(GeoError, match="not found"):
        sg.vectorize(path, None, prompts=tmp_path / "missing.geojson", predictor=FloodPredictor(), progress=False)
    nocrs = gpd.GeoDataFrame(geometry=list(pts.geometry[:2]))
    with pytest.raises(GeoError, match="no CRS"):
        sg.vectorize(path, None, prompts=nocrs, predictor=FloodPredictor(), progress=False)
