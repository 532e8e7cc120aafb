"""True areas in m^2 for any CRS, and the polygon options: min area, simplify, holes, buildings."""

from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from geo_helpers import synthetic_raster
from rasterio.features import rasterize
from shapely import affinity
from shapely.geometry import Polygon

import samkit.geo as sg
from samkit.geo.polygons import regularize_polygon
from samkit.geo.testing import LabelSegmenter

US_FOOT = 1200 / 3937


def _square_codes(n=100, size=300):
    codes = np.zeros((size, size), np.uint32)
    codes[100:100 + n, 100:100 + n] = 7
    return codes


def _laea_area(geom, crs):
    c = shapely.centroid(geom)
    lon, lat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(c.x, c.y)
    laea = pyproj.CRS.from_proj4(f"+proj=laea +lat_0={lat} +lon_0={lon} +ellps=WGS84")
    t = pyproj.Transformer.from_crs(crs, laea, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))).area


def test_area_in_us_survey_feet_crs(tmp_path, geo_dir):
    with rasterio.open(geo_dir / "geoapi__SP27GTIF.tiff") as ds:
        crs, transform = ds.crs, ds.transform
    assert "foot" in crs.linear_units.lower()
    path = tmp_path / "feet.tif"
    from geo_helpers import codes_to_rgb, write_rgb

    write_rgb(path, codes_to_rgb(_square_codes()), crs=crs, transform=transform)
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), progress=False)
    planar_ft2 = gdf.geometry.iloc[0].area
    assert math.isclose(planar_ft2, (100 * 32.8) ** 2, rel_tol=1e-9)
    assert math.isclose(gdf["area_m2"].iloc[0], planar_ft2 * US_FOOT ** 2, rel_tol=2e-3)


def test_area_in_geographic_crs(tmp_path):
    path, _ = synthetic_raster(tmp_path / "geo.tif", _square_codes(), crs="EPSG:4326", origin=(10.0, 60.0),
                               res=1e-4)
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), progress=False)
    g = gdf.geometry.iloc[0]
    assert g.area < 1e-3  # square degrees
    assert math.isclose(gdf["area_m2"].iloc[0], _laea_area(g, "EPSG:4326"), rel_tol=1e-3)
    assert 6.0e5 < gdf["area_m2"].iloc[0] < 6.4e5  # 0.01 degree: ~1113 m north-south x ~558 m east-west


def test_area_in_web_mercator_is_ground_area(tmp_path):
    path, _ = synthetic_raster(tmp_path / "merc.tif", _square_codes(), crs="EPSG:3857",
                               origin=(1113194.9, 8399737.9), res=2.0)  # ~60 degrees north
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), progress=False)
    g = gdf.geometry.iloc[0]
    assert math.isclose(gdf["area_m2"].iloc[0], _laea_area(g, "EPSG:3857"), rel_tol=1e-3)
    assert 0.24 < gdf["area_m2"].iloc[0] / g.area < 0.26  # Mercator inflates areas 4x at 60 degrees


def test_area_in_crs_without_epsg_code(tmp_path, geo_dir):
    with rasterio.open(geo_dir / "solaris__sample_geotiff_custom_proj.tif") as ds:
        crs, transform = ds.crs, ds.transform
    assert crs.to_epsg() is None
    from geo_helpers import codes_to_rgb, write_rgb

    path = write_rgb(tmp_path / "albers.tif", codes_to_rgb(_square_codes()), crs=crs, transform=transform)
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), progress=False)
    # an Albers equal-area projection: planar area is true area
    assert math.isclose(gdf["area_m2"].iloc[0], gdf.geometry.iloc[0].area, rel_tol=2e-3)
    assert gdf.crs == pyproj.CRS.from_wkt(crs.to_wkt())


def test_min_area_in_square_metres(tmp_path):
    codes = np.zeros((200, 200), np.uint32)
    codes[10:20, 10:20] = 1  # 100 px = 25 m^2 at 0.5 m
    codes[50:90, 50:90] = 2  # 1600 px = 400 m^2
    path, _ = synthetic_raster(tmp_path / "a.tif", codes, res=0.5)
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), progress=False)
    assert sorted(np.round(gdf["area_m2"])) == [25, 400]
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), min_area=30, progress=False)
    assert list(np.round(gdf["area_m2"])) == [400] and list(gdf["id"]) == [1]


def test_min_area_applies_to_whole_objects_not_tile_pieces(tmp_path):
    codes = np.zeros((200, 200), np.uint32)
    codes[40:60, 55:75] = 1  # 400 px crossing the border of 64 px tiles: pieces are smaller
    path, _ = synthetic_raster(tmp_path / "b.tif", codes, res=1.0)
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), tile_size=64, overlap=0, min_area=300,
                       progress=False)
    assert len(gdf) == 1 and gdf["area_m2"].iloc[0] == pytest.approx(400, rel=1e-3)


def _rotated_shape_raster(tmp_path, shape, angle=27.0, res=0.25):
    """Rasterise ``shape`` (metres, around the origin) rotated by ``angle`` as code 5."""
    rotated = affinity.rotate(shape, angle, origin=(0, 0))
    transform = Affine(res, 0, -40, 0, -res, 40)
    codes = rasterize([(rotated, 5)], out_shape=(320, 320), transform=transform, dtype="uint32")
    path, _ = synthetic_raster(tmp_path / "b.tif", codes, origin=(-40, 40), res=res)
    return path, rotated


def _angles(poly):
    xy = np.asarray(poly.exterior.coords)[:-1]
    out = []
    for k in range(len(xy)):
        a, b, c = xy[k - 1], xy[k], xy[(k + 1) % len(xy)]
        v1, v2 = a - b, c - b
        cos = np.dot(v1, v2) / (np.linalg.norm(v1) * np.linalg.norm(v2))
        out.append(math.degrees(math.acos(np.clip(cos, -1, 1))))
    return np.array(out)


def test_building_regularisation_gives_right_angles(tmp_path):
    l_shape = Polygon([(-15, -10), (15, -10), (15, 0), (0, 0), (0, 12), (-15, 12)])
    path, truth = _rotated_shape_raster(tmp_path, l_shape)
    raw = sg.vectorize(path, None, generator=LabelSegmenter(), progress=False).geometry.iloc[0]
    reg = sg.vectorize(path, None, generator=LabelSegmenter(), regularize=True, progress=False).geometry.iloc[0]
    assert len(raw.exterior.coords) > 60  # a staircase
    assert len(reg.exterior.coords) == 7  # six corners
    assert np.all(np.abs(_angles(reg) - 90) < 0.5) or np.all(
        (np.abs(_angles(reg) - 90) < 0.5) | (np.abs(_angles(reg) - 270) < 0.5))
    iou = reg.intersection(truth).area / reg.union(truth).area
    assert iou > 0.97 and reg.is_valid


def test_regularise_falls_back_for_round_shapes():
    disk = shapely.Point(0, 0).buffer(10, quad_segs=32)
    reg = regularize_polygon(disk, 0.5)
    assert reg.is_valid and reg.intersection(disk).area / reg.union(disk).area > 0.7


def test_simplify_and_fill_holes(tmp_path):
    codes = np.zeros((200, 200), np.uint32)
    rr, cc = np.mgrid[0:200, 0:200]
    disk = (rr - 100) ** 2 + (cc - 100) ** 2 < 80 ** 2
    codes[disk] = 3
    codes[90:110, 90:110] = 0  # a hole
    path, _ = synthetic_raster(tmp_path / "d.tif", codes, res=0.5)
    raw = sg.vectorize(path, None, generator=LabelSegmenter(), progress=False).geometry.iloc[0]
    simple = sg.vectorize(path, None, generator=LabelSegmenter(), simplify=1.0, progress=False).geometry.iloc[0]
    assert len(simple.exterior.coords) < len(raw.exterior.coords) / 4
    assert simple.hausdorff_distance(raw) <= 1.0 + 1e-9 and simple.is_valid
    assert len(raw.interiors) == 1
    filled = sg.vectorize(path, None, generator=LabelSegmenter(), fill_holes=True, progress=False).geometry.iloc[0]
    assert len(filled.interiors) == 0
    assert filled.area == pytest.approx(raw.area + 20 * 20 * 0.25)


def test_simplified_outlines_stay_out_of_nodata(tmp_path):
    h = w = 200
    rr, cc = np.mgrid[0:h, 0:w]
    valid = rr + cc < 260  # a diagonal nodata edge
    codes = np.full((h, w), 9, np.uint32)
    alpha = (valid * 255).astype(np.uint8)
    path, transform = synthetic_raster(tmp_path / "n.tif", codes, res=1.0, alpha=alpha)
    for kwargs in [dict(simplify=6.0), dict(regularize=True), dict(fill_holes=True, simplify=3.0)]:
        gdf = sg.vectorize(path, None, generator=LabelSegmenter(), tile_size=64, overlap=16, progress=False,
                           **kwargs)
        covered = rasterize(((g, 1) for g in gdf.geometry), out_shape=(h, w), transform=transform,
                            dtype="uint8", all_touched=False).astype(bool)
        assert not (covered & ~valid).any(), kwargs
        # and no polygon crosses the nodata edge by more than float noise
        valid_poly = shapely.union_all([shapely.box(*rasterio.transform.array_bounds(h, w, transform))])
        # pixels with column + row >= 260 are nodata; their union contains this triangle
        nodata_tri = affinity.affine_transform(Polygon([(200, 61), (200, 200), (61, 200)]),
                                               [transform.a, transform.b, transform.d, transform.e,
                                                transform.c, transform.f])
        assert all(g.intersection(nodata_tri).area < 1e-6 for g in gdf.geometry), kwargs
        assert valid_poly.contains(shapely.union_all(list(gdf.geometry)))


def test_pixel_space_areas(tmp_path):
    codes = _square_codes()
    from geo_helpers import codes_to_rgb, write_rgb

    path = write_rgb(tmp_path / "px.tif", codes_to_rgb(codes), crs=None, transform=Affine(2, 0, 10, 0, -2, 50))
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), pixel_space=True, progress=False)
    assert gdf.crs is None and np.isnan(gdf["area_m2"]).all()
    assert gdf["area_px"].iloc[0] == 100 * 100
    assert gdf.geometry.iloc[0].bounds == (100, 100, 200, 200)  # x = column, y = row
