"""Output formats by extension, attributes, atomic writes, the instance-id GeoTIFF."""

from __future__ import annotations

import os

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

import samkit.geo as sg
from samkit.geo import GeoError
from samkit.geo.testing import LabelSegmenter


def _read(path):
    return gpd.read_parquet(path) if str(path).endswith(".parquet") else gpd.read_file(path)


@pytest.fixture(scope="module")
def kampala_result(kampala_truth):
    path = kampala_truth[0]
    return path, sg.vectorize(path, None, generator=LabelSegmenter(score_of=lambda c: (c % 97) / 100.0),
                              tile_size=256, overlap=32, progress=False)


@pytest.mark.parametrize("ext", ["gpkg", "geojson", "shp", "fgb", "parquet"])
def test_formats_round_trip(kampala_result, tmp_path, ext):
    src, ref = kampala_result
    out = tmp_path / f"objects.{ext}"
    gdf = sg.vectorize(src, out, generator=LabelSegmenter(score_of=lambda c: (c % 97) / 100.0), tile_size=256,
                       overlap=32, progress=False)
    back = _read(out)
    if ext == "fgb":  # FlatGeobuf stores features in the order of its spatial index
        back = back.sort_values("id").reset_index(drop=True)
    assert len(back) == len(ref) == len(gdf)
    assert back.crs == ref.crs and back.crs.to_epsg() == 3857
    stab = "stability" if ext == "shp" else "stability_score"  # shapefile names are 10 characters at most
    assert list(back.columns) == ["id", "score", stab, "area_m2", "area_px", "tile", "n_tiles", "geometry"]
    assert list(back["id"]) == list(range(1, len(ref) + 1))
    assert np.allclose(back["score"], ref["score"]) and np.allclose(back["area_m2"], ref["area_m2"])
    assert sorted(set(back["score"])) != [1.0]  # scores come from the segmenter's records
    assert all(a.equals_exact(b, 1e-6) for a, b in zip(back.geometry.normalize(), ref.geometry.normalize()))
    # nothing but the output (and the shapefile's sidecars) is left in the directory
    names = sorted(os.listdir(tmp_path))
    expect = (["objects.cpg", "objects.dbf", "objects.prj", "objects.shp", "objects.shx"] if ext == "shp"
              else [f"objects.{ext}"])
    assert names == expect


def test_gpkg_layer_name_and_to_crs(kampala_result, tmp_path):
    src, ref = kampala_result
    out = tmp_path / "o.gpkg"
    gdf = sg.vectorize(src, out, generator=LabelSegmenter(), tile_size=256, overlap=32, layer="buildings",
                       to_crs="EPSG:4326", progress=False)
    import pyogrio

    assert [n for n, _ in pyogrio.list_layers(out)] == ["buildings"]
    back = gpd.read_file(out, layer="buildings")
    assert back.crs.to_epsg() == 4326 and gdf.crs.to_epsg() == 4326
    assert np.allclose(back["area_m2"], ref["area_m2"])  # true areas do not depend on the output CRS
    assert back.total_bounds[0] > 32 and back.total_bounds[2] < 33  # Kampala, lon ~32.6


class Boom(Exception):
    pass


def _files(d):
    """The directory's files, without the checkpoint folder a failed run keeps for resuming."""
    return sorted(p for p in os.listdir(d) if not p.endswith(".samkit-tiles"))


@pytest.mark.parametrize("ext", ["gpkg", "shp", "parquet", "fgb"])
def test_interrupted_write_leaves_no_complete_looking_file(kampala_result, tmp_path, monkeypatch, ext):
    src, _ = kampala_result
    out = tmp_path / f"objects.{ext}"
    real_to_file, real_to_parquet = gpd.GeoDataFrame.to_file, gpd.GeoDataFrame.to_parquet

    def half_then_crash(self, path, *a, **kw):
        (real_to_parquet(self.iloc[:3], path) if ext == "parquet" else real_to_file(self.iloc[:3], path, *a, **kw))
        raise Boom("disk pulled out")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_parquet" if ext == "parquet" else "to_file", half_then_crash)
    with pytest.raises(Boom):
        sg.vectorize(src, out, generator=LabelSegmenter(), tile_size=512, overlap=32, progress=False)
    assert _files(tmp_path) == [], "a half-written output (or temporary file) was left behind"

    # an older complete output survives a crashed overwrite untouched
    monkeypatch.undo()
    sg.vectorize(src, out, generator=LabelSegmenter(), tile_size=512, overlap=32, progress=False)
    before = {p: (tmp_path / p).read_bytes() for p in _files(tmp_path)}
    monkeypatch.setattr(gpd.GeoDataFrame, "to_parquet" if ext == "parquet" else "to_file", half_then_crash)
    with pytest.raises(Boom):
        sg.vectorize(src, out, generator=LabelSegmenter(), tile_size=512, overlap=32, progress=False,
                     overwrite=True)
    assert {p: (tmp_path / p).read_bytes() for p in _files(tmp_path)} == before


def test_existing_output_needs_overwrite(kampala_result, tmp_path):
    src, _ = kampala_result
    out = tmp_path / "o.gpkg"
    out.write_bytes(b"precious")
    with pytest.raises(GeoError, match="exists.*overwrite"):
        sg.vectorize(src, out, generator=LabelSegmenter(), progress=False)
    assert out.read_bytes() == b"precious"
    sg.vectorize(src, out, generator=LabelSegmenter(), progress=False, overwrite=True)
    assert len(gpd.read_file(out)) > 50


def test_instance_id_geotiff(kampala_result, tmp_path):
    src, _ = kampala_result
    ids = tmp_path / "ids.tif"
    gdf = sg.vectorize(src, tmp_path / "o.gpkg", generator=LabelSegmenter(), tile_size=256, overlap=32,
                       id_raster=ids, progress=False)
    with rasterio.open(src) as ds_src, rasterio.open(ids) as ds:
        assert ds.crs == ds_src.crs and ds.transform == ds_src.transform
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (ds_src.width, ds_src.height, 1, "uint32")
        assert ds.block_shapes[0] == (512, 512) and ds.compression.name.lower() == "deflate"
        assert ds.nodata == 0
        arr = ds.read(1)
        transform = ds.transform
    expect = rasterize(zip(gdf.geometry, gdf["id"]), out_shape=arr.shape, transform=transform, dtype="uint32")
    assert np.array_equal(arr, expect)
    assert set(np.unique(arr)) == {0, *gdf["id"]}
    assert all((arr == i).sum() == a for i, a in zip(gdf["id"], gdf["area_px"]))


def test_a_layer_of_an_existing_geopackage_leaves_its_other_layers(kampala_result, tmp_path):
    """--overwrite --layer replaces that layer only; the file's other layers stay."""
    import pyogrio
    from shapely.geometry import Point

    src, ref = kampala_result
    out = tmp_path / "project.gpkg"
    roads = gpd.GeoDataFrame({"name": ["a", "b"]}, geometry=[Point(0, 0), Point(1, 1)], crs=ref.crs)
    roads.to_file(out, layer="roads", engine="pyogrio")
    for _ in range(2):  # adding the layer, then replacing it
        sg.vectorize(src, out, generator=LabelSegmenter(), tile_size=256, overlap=32, layer="buildings",
                     overwrite=True, progress=False)
        assert sorted(n for n, _ in pyogrio.list_layers(out)) == ["buildings", "roads"]
        assert len(gpd.read_file(out, layer="buildings")) == len(ref)
        assert list(gpd.read_file(out, layer="roads")["name"]) == ["a", "b"]
    # without a layer name the file is replaced, as before
    sg.vectorize(src, out, generator=LabelSegmenter(), tile_size=256, overlap=32, overwrite=True, progress=False)
    assert [n for n, _ in pyogrio.list_layers(out)] == ["project"]


@pytest.mark.parametrize("ext", ["geojson", "fgb"])
def test_layer_name_is_the_file_name_not_the_temporary_one(kampala_result, tmp_path, ext):
    import pyogrio

    src, _ = kampala_result
    out = tmp_path / f"buildings.{ext}"
    sg.vectorize(src, out, generator=LabelSegmenter(), tile_size=256, overlap=32, progress=False)
    assert [n for n, _ in pyogrio.list_layers(out)] == ["buildings"]
