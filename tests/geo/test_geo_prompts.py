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


def test_messages_show_plain_numbers(kampala_prompts):
    """No numpy reprs (np.float64(...), np.int64(...)) in what the user reads."""
    path, regions, pts = kampala_prompts
    with pytest.raises(GeoError) as exc:
        sg.vectorize(path, None, prompts={"boxes": [[3.6e6, 40000.5, 3.5e6, 41000]], "crs": "EPSG:3857"},
                     predictor=FloodPredictor(), progress=False)
    assert "box 3600000, 40000.5, 3500000, 41000 must be xmin, ymin, xmax, ymax" in str(exc.value)
    two_boxes = gpd.GeoDataFrame({"prompt_id": np.array([7, 7])},
                                 geometry=[shapely.box(*regions[0].bounds), shapely.box(*regions[1].bounds)],
                                 crs=pts.crs)
    with pytest.raises(GeoError, match=r"prompt 7 has more than one box"):
        sg.vectorize(path, None, prompts=two_boxes, predictor=FloodPredictor(), progress=False)
    with pytest.raises(GeoError, match=r"prompt label 2 is neither"):
        sg.vectorize(path, None, prompts=pts.iloc[:1].assign(label=np.array([2])), predictor=FloodPredictor(),
                     progress=False)
    far = gpd.GeoDataFrame(geometry=[Point(0, 0)], crs=pts.crs)
    with pytest.raises(GeoError, match=r"\(e\.g\. prompt 0 at "):
        sg.vectorize(path, None, prompts=far, predictor=FloodPredictor(), progress=False)


def test_a_wrong_crs_in_a_geopackage_is_not_blamed_on_geojson(geo_dir, tmp_path):
    """The hint names the file's real format and where its CRS came from."""
    raster = geo_dir / "solaris__sample_geotiff_custom_proj.tif"
    labels = gpd.read_file(geo_dir / "solaris__geotiff_custom_proj_labels.geojson")  # Albers metres, says 4326
    f = tmp_path / "boxes.gpkg"
    labels.to_file(f)
    with pytest.raises(GeoError) as exc:
        sg.vectorize(raster, None, prompts=f, predictor=FloodPredictor(), progress=False)
    msg = str(exc.value)
    assert "the CRS the GeoPackage file declares is wrong" in msg and "GeoJSON" not in msg
    assert "prompts_crs='raster'" in msg and "fix the file's CRS" in msg
    with pytest.raises(GeoError) as exc:
        sg.vectorize(raster, None, prompts=f, prompts_crs="EPSG:4326", predictor=FloodPredictor(), progress=False)
    msg = str(exc.value)
    assert "prompts_crs (CLI --prompt-crs) is not the CRS they are in" in msg and "GeoJSON" not in msg
    with pytest.raises(GeoError) as exc:
        sg.vectorize(raster, None, prompts=labels, predictor=FloodPredictor(), progress=False)
    assert "the CRS given with the prompts is wrong" in str(exc.value) and "GeoJSON" not in str(exc.value)


def test_a_long_thin_box_is_answered_at_full_resolution(tmp_path):
    """A road-like box 5800 x 8 px is not read as one square window shrunk to 1024 px (which
    leaves its 8 px width about one pixel): it is answered in overlapping parts along its length,
    each at full resolution, and the parts' masks come out as one polygon."""
    from geo_helpers import synthetic_raster

    codes = np.zeros((400, 6000), np.uint32)
    codes[196:204, 100:5900] = 0x405060  # the road
    codes[206:230, 1000:1300] = 0x102030  # a field beside it
    path, transform = synthetic_raster(tmp_path / "road.tif", codes)
    (road, _), = [(g, v) for g, v in reference_regions(codes, transform) if v == 0x405060]
    x0, y0, x1, y1 = road.bounds
    pred = FloodPredictor()
    gdf = sg.vectorize(path, None, prompts={"boxes": [[x0, y0, x1, y1]], "crs": "EPSG:32633"}, predictor=pred,
                       progress=False)
    assert len(gdf) == 1 and gdf["prompt_id"].iloc[0] == "b0"
    ious, _ = match_polygons(gdf.geometry, [road])
    assert ious[0] > 0.999
    assert all(shape == (400, 1024, 3) for shape in pred.images)  # full resolution windows
    assert len(pred.images) <= 16
    # the tile attribute covers the windows of all parts
    x, y, w, h = _window(gdf["tile"].iloc[0])
    assert x <= 100 and x + w >= 5900


def test_split_long_box():
    from samkit.geo.prompts import split_long_box

    p = Prompt("road", points=np.array([[100.0, 30.0], [5000.0, 30.0]]), labels=np.array([1, 0]),
               box=np.array([0.0, 0.0, 11800.0, 60.0]))
    parts = split_long_box(p, 1024)
    assert len(parts) > 20
    assert all(q.prompt_id == "road" and q.box[2] - q.box[0] == 512 and (q.box[1], q.box[3]) == (0, 60)
               for q in parts)
    assert parts[0].box[0] == 0 and parts[-1].box[2] == 11800
    assert all(b.box[0] < a.box[2] for a, b in zip(parts, parts[1:]))  # consecutive parts overlap
    assert sum(len(q.points) for q in parts) >= 2 and all(
        ((q.points[:, 0] >= q.box[0]) & (q.points[:, 0] <= q.box[2])).all() for q in parts)
    # a tall one splits along its height; a big but not thin box stays whole (read at reduced resolution)
    tall = split_long_box(Prompt("t", box=np.array([10.0, 0.0, 50.0, 4000.0])), 1024)
    assert len(tall) > 1 and all(q.box[0] == 10 and q.box[2] == 50 for q in tall)
    big = Prompt("big", box=np.array([0.0, 0.0, 1500.0, 1400.0]))
    (whole,) = split_long_box(big, 1024)
    assert whole is big
