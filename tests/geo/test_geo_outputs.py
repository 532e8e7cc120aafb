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


def _schema(path):
    """(name, type) of every attribute column as stored in the file."""
    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        return [(f.name, str(f.type)) for f in schema if f.name != "geometry"]
    import pyogrio

    info = pyogrio.read_info(path)
    return list(zip(info["fields"], info["dtypes"]))


class _Nothing:
    def generate(self, image):
        return []


class _Blind:
    """A predictor whose every mask is empty."""

    def set_image(self, image):
        self.shape = image.shape[:2]

    def predict(self, multimask_output=True, return_logits=False, **kwargs):
        n = 3 if multimask_output else 1
        return np.full((n, *self.shape), -10.0, np.float32), np.linspace(0.9, 0.7, n), np.zeros((n, 256, 256))


# GeoJSON is left out: an empty FeatureCollection has no fields to declare (the format has no schema)
@pytest.mark.parametrize("ext", ["gpkg", "shp", "fgb", "parquet"])
def test_an_empty_layer_has_the_schema_of_a_full_one(kampala_result, tmp_path, ext):
    src, _ = kampala_result
    full, empty = tmp_path / "full", tmp_path / "empty"
    full.mkdir()
    empty.mkdir()
    sg.vectorize(src, full / f"o.{ext}", generator=LabelSegmenter(), tile_size=512, progress=False)
    sg.vectorize(src, empty / f"o.{ext}", generator=_Nothing(), tile_size=512, allow_empty=True, progress=False)
    assert len(_read(empty / f"o.{ext}")) == 0
    assert _schema(empty / f"o.{ext}") == _schema(full / f"o.{ext}")
    assert dict(_schema(full / f"o.{ext}"))["tile"] in ("object", "large_string", "string")


def test_an_empty_prompt_layer_has_the_schema_of_a_full_one(kampala_truth, tmp_path):
    from geo_helpers import FloodPredictor

    path, codes, transform, crs, _ = kampala_truth
    x, y = transform.c + 512 * transform.a, transform.f + 512 * transform.e
    prompts = {"points": [[x, y]], "crs": crs.to_wkt()}
    full = sg.vectorize(path, tmp_path / "full.gpkg", prompts=prompts, predictor=FloodPredictor(), progress=False)
    empty = sg.vectorize(path, tmp_path / "empty.gpkg", prompts=prompts, predictor=_Blind(), allow_empty=True,
                         progress=False)
    assert len(full) == 1 and len(empty) == 0
    assert dict(empty.dtypes) == dict(full.dtypes)
    assert _schema(tmp_path / "empty.gpkg") == _schema(tmp_path / "full.gpkg")


@pytest.mark.parametrize("raster, name", [("solaris__sample_geotiff_custom_proj.tif", "custom Albers Equal Area"),
                                          ("rasterio__float_raster_with_nodata.tif", "IGNF:ETRS89LAEA")])
def test_geojson_of_a_crs_without_epsg_code_is_refused_before_any_work(geo_dir, tmp_path, capsys, raster, name):
    """RFC 7946 GeoJSON names no CRS but by EPSG code: such a file would lose its georeferencing."""
    from samkit.cli import main

    class MustNotRun:
        def generate(self, image):
            raise AssertionError("the CRS check must come before any tile is segmented")

    src = geo_dir / raster
    out = tmp_path / "o.geojson"
    with pytest.raises(GeoError, match=rf"GeoJSON .*EPSG.*{name}.*o\.gpkg, \.fgb or \.parquet.*--to-crs"):
        sg.vectorize(src, out, generator=MustNotRun(), progress=False)
    assert os.listdir(tmp_path) == []
    rc = main(["geo", "vectorize", str(src), "-o", str(out), "--generator", "samkit.geo.testing:LabelSegmenter",
               "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("samkit: error: GeoJSON")
    assert os.listdir(tmp_path) == []
    # reprojected to an EPSG CRS it is written, with its CRS
    gdf = sg.vectorize(src, out, generator=LabelSegmenter(min_area=20), to_crs="EPSG:4326", allow_empty=True,
                       progress=False)
    assert gpd.read_file(out).crs.to_epsg() == 4326 and gdf.crs.to_epsg() == 4326


def test_tile_attribute_is_the_source_window_in_both_modes(kampala_truth):
    """One format for ``tile`` whether it names a grid tile or a prompt's window."""
    import re

    import shapely
    from geo_helpers import FloodPredictor

    from samkit.geo import TileGrid

    path, codes, transform, crs, _ = kampala_truth
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), tile_size=256, overlap=32, pixel_space=True,
                       progress=False)
    windows = {t.name: t for t in TileGrid(1024, 1024, 256, 32).tiles}
    for tile, geom in zip(gdf["tile"], gdf.geometry):
        x, y, w, h = (int(v) for v in re.fullmatch(r"x(\d+)y(\d+)w(\d+)h(\d+)", tile).groups())
        assert tile in windows and shapely.box(x, y, x + w, y + h).intersects(geom)
    x, y = transform.c + 300 * transform.a, transform.f + 300 * transform.e
    one = sg.vectorize(path, None, prompts={"points": [[x, y]], "crs": crs.to_wkt()}, predictor=FloodPredictor(),
                       tile_size=256, progress=False)
    assert re.fullmatch(r"x\d+y\d+w\d+h\d+", one["tile"].iloc[0])
