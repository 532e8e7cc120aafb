"""Reading: one global stretch, nodata (value, mask, alpha), band choice, pixel types, windows."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from geo_helpers import (
    ATLANTA,
    codes_to_rgb,
    match_polygons,
    reference_regions,
    synthetic_raster,
    write_truncated_raster,
)
from rasterio.features import rasterize

import samkit.geo as sg
from samkit.geo import GeoError, TileGrid
from samkit.geo.raster import apply_stretch
from samkit.geo.testing import LabelSegmenter


class Recorder:
    """Keeps every tile image it is given; finds nothing."""

    def __init__(self):
        self.images = []

    def generate(self, image):
        self.images.append(image.copy())
        return []


class Everything:
    """One mask covering the whole tile (to see where nodata clips it), plus a count of calls."""

    def __init__(self):
        self.calls = 0

    def generate(self, image):
        self.calls += 1
        h, w = image.shape[:2]
        return [{"segmentation": np.ones((h, w), bool), "area": h * w, "bbox": [0, 0, w, h],
                 "predicted_iou": 0.9, "stability_score": 0.8, "point_coords": [[0, 0]], "crop_box": [0, 0, w, h]}]


def test_one_global_stretch_for_every_tile(geo_dir):
    path = geo_dir / ATLANTA
    with rasterio.open(path) as ds:
        raw = ds.read(1)
        valid = ds.read_masks(1) > 0
    lo, hi = np.percentile(raw[valid], [2, 98])
    rec = Recorder()
    sg.vectorize(path, None, generator=rec, tile_size=256, overlap=32, progress=False, allow_empty=True)
    grid = TileGrid(raw.shape[1], raw.shape[0], 256, 32)
    assert len(rec.images) == len(grid)
    per_tile_diff = []
    for t, img in zip(grid.tiles, rec.images):
        window = raw[t.r0:t.r1, t.c0:t.c1]
        expect = apply_stretch(window, (lo, hi))
        assert img.shape == (*t.shape, 3)
        assert np.array_equal(img[..., 0], expect) and np.array_equal(img[..., 1], expect)
        own = apply_stretch(window, tuple(np.percentile(window, [2, 98])))
        per_tile_diff.append(np.abs(own.astype(int) - expect.astype(int)).mean())
    # a per-tile stretch would have differed visibly (seams): the test data shows the difference
    assert max(per_tile_diff) > 5


def test_stretch_statistics_exclude_nodata(tmp_path, geo_dir):
    with rasterio.open(geo_dir / ATLANTA) as ds:
        profile, data = ds.profile, ds.read(1)
    data = data.copy()
    data[:, :450] = 0  # nodata 0 over half the raster
    path = tmp_path / "half_nodata.tif"
    with rasterio.open(path, "w", **profile) as out:
        out.write(data, 1)
    rec = Recorder()
    sg.vectorize(path, None, generator=rec, tile_size=1024, progress=False, allow_empty=True)
    lo, hi = np.percentile(data[:, 450:], [2, 98])
    expect = apply_stretch(data, (lo, hi))
    expect[:, :450] = 0
    assert np.array_equal(rec.images[0][..., 0], expect)
    assert lo > 100  # had the zeros counted, the low end would be 0


def test_explicit_and_percentile_stretch_options(geo_dir):
    path = geo_dir / ATLANTA
    with rasterio.open(path) as ds:
        raw = ds.read(1)
    for stretch, lohi in [((500.0, 1500.0), (500.0, 1500.0)), ("5,95", tuple(np.percentile(raw, [5, 95]))),
                          ("minmax", (float(raw.min()), float(raw.max())))]:
        rec = Recorder()
        sg.vectorize(path, None, generator=rec, stretch=stretch, progress=False, allow_empty=True)
        assert np.array_equal(rec.images[0][..., 0], apply_stretch(raw, lohi)), stretch
    with pytest.raises(GeoError, match="stretch"):
        sg.vectorize(path, None, generator=Recorder(), stretch="bogus", progress=False)


class GlobalRecorder(Recorder):
    """A Recorder the CLI can build by name (``--generator test_geo_raster:GlobalRecorder``)."""

    images: list = []

    def __init__(self):
        pass


def test_cli_stretch_values_apply_to_every_band(geo_dir, tmp_path, capsys):
    """--stretch v:LO,HI on a 3-band 16-bit raster: one pair for all bands."""
    from samkit.cli import main

    path = geo_dir / "ftw__inference-img.tif"
    with rasterio.open(path) as ds:
        raw = ds.read([1, 2, 3])
    GlobalRecorder.images.clear()
    rc = main(["geo", "vectorize", str(path), "-o", str(tmp_path / "o.gpkg"), "--stretch", "v:200,2000",
               "--generator", f"{__name__}:GlobalRecorder", "--allow-empty", "-q"])
    assert rc == 0, capsys.readouterr().err
    (img,) = GlobalRecorder.images
    expect = np.stack([apply_stretch(b, (200, 2000)) for b in raw], axis=-1)
    assert np.array_equal(img, expect)


def _nodata_variants(tmp_path):
    """A 300x300 raster whose nodata (left third, plus a triangle) is marked by value, by an
    internal mask and by alpha. Returns [(name, path)], the valid mask."""
    h = w = 300
    rr, cc = np.mgrid[0:h, 0:w]
    valid = (cc >= 100) & ~(rr + cc > 500)
    rgb = np.stack([(rr % 200 + 20), (cc % 200 + 20), np.full((h, w), 77)]).astype(np.uint8)
    transform = Affine(1.0, 0, 600000, 0, -1.0, 4000000)
    base = dict(driver="GTiff", width=w, height=h, dtype="uint8", crs="EPSG:32633", transform=transform,
                tiled=True, blockxsize=64, blockysize=64)
    out = []
    p = tmp_path / "nd_value.tif"
    with rasterio.open(p, "w", count=3, nodata=0, **base) as ds:
        ds.write(np.where(valid, rgb, 0))
    out.append(("value", p))
    p = tmp_path / "nd_mask.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(p, "w", count=3, **base) as ds:
            ds.write(rgb)
            ds.write_mask(valid.astype(np.uint8) * 255)
    out.append(("mask", p))
    p = tmp_path / "nd_alpha.tif"
    with rasterio.open(p, "w", count=4, photometric="RGB", alpha="YES", **base) as ds:
        ds.write(rgb, [1, 2, 3])
        ds.write(valid.astype(np.uint8) * 255, 4)
    out.append(("alpha", p))
    return out, valid, transform


def test_nodata_by_value_mask_and_alpha_is_honoured(tmp_path):
    variants, valid, transform = _nodata_variants(tmp_path)
    grid = TileGrid(300, 300, 100, 20)
    tiles_with_data = sum(valid[t.r0:t.r1, t.c0:t.c1].any() for t in grid.tiles)
    assert tiles_with_data < len(grid)
    for name, path in variants:
        assert sg.info(path)["nodata_source"] == name
        gen = Everything()
        gdf = sg.vectorize(path, None, generator=gen, tile_size=100, overlap=20, progress=False)
        assert gen.calls == tiles_with_data, f"{name}: all-nodata tiles must be skipped"
        covered = rasterize(((g, 1) for g in gdf.geometry), out_shape=valid.shape, transform=transform,
                            dtype="uint8").astype(bool)
        assert not (covered & ~valid).any(), f"{name}: a polygon reaches into nodata"
        assert (covered == valid).all(), f"{name}: the valid area must be covered exactly"


def test_explicit_nodata_value_overrides(tmp_path):
    codes = np.zeros((120, 120), np.uint32)
    codes[10:50, 10:50] = 0x0A0A0A
    codes[60:100, 60:100] = 0x050505  # treated as nodata below
    path, _ = synthetic_raster(tmp_path / "ov.tif", codes)
    assert len(sg.vectorize(path, None, generator=LabelSegmenter(), progress=False)) == 2
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), nodata=5, progress=False)
    assert len(gdf) == 1


def test_band_selection(tmp_path):
    h = w = 200
    codes = np.zeros((h, w), np.uint32)
    codes[20:80, 20:90] = 0x123456
    codes[80:150, 90:180] = 0x654321
    codes[150:190, 10:60] = 0x00FF00
    planes = codes_to_rgb(codes)
    rng = np.random.default_rng(0)
    blocks = rng.integers(1, 255, (6, h // 20, w // 20), dtype=np.uint8)
    data = np.repeat(np.repeat(blocks, 20, axis=1), 20, axis=2)  # other bands: 20 px blocks of noise
    data[4], data[1], data[3] = planes  # R in band 5, G in band 2, B in band 4
    path = tmp_path / "six.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=6, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(1, 0, 0, 0, -1, 200)) as ds:
        ds.write(data)
    _, transform = synthetic_raster(tmp_path / "ref.tif", codes, origin=(0, 200), res=1)
    refs = [g for g, _ in reference_regions(codes, transform)]
    for bands in [(5, 2, 4), "5,2,4"]:
        gdf = sg.vectorize(path, None, generator=LabelSegmenter(), bands=bands, progress=False)
        ious, per_out = match_polygons(gdf.geometry, refs)
        assert len(gdf) == 3 and ious.min() > 0.999
    noisy = sg.vectorize(path, None, generator=LabelSegmenter(), progress=False)
    assert len(noisy) > 50  # bands 1,2,3 are mostly noise
    for bad in [(7,), (1, 2), (0, 1, 2)]:
        with pytest.raises(GeoError, match="band"):
            sg.vectorize(path, None, generator=LabelSegmenter(), bands=bad, progress=False)


@pytest.mark.parametrize("dtype,nodata", [("uint8", None), ("uint16", 0), ("int16", -9999), ("int32", None),
                                          ("float32", float("nan")), ("float64", -3.4e38)])
def test_pixel_types_single_band(tmp_path, dtype, nodata):
    h = w = 150
    codes = np.zeros((h, w), np.int64)
    codes[10:60, 10:140] = 40
    codes[60:140, 10:70] = 90
    codes[60:140, 70:140] = 200
    data = codes.astype(dtype)
    valid = np.ones((h, w), bool)
    if nodata is not None:
        data[:, :5] = nodata
        valid[:, :5] = False
    path = tmp_path / f"{dtype}.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype=dtype, nodata=nodata,
                       crs="EPSG:3035", transform=Affine(10, 0, 4e6, 0, -10, 3e6)) as ds:
        ds.write(data, 1)
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), stretch="none", tile_size=64, overlap=8,
                       progress=False)
    grey = np.where(valid, codes, 0)
    refs = [g for g, _ in reference_regions(grey, Affine(10, 0, 4e6, 0, -10, 3e6))]
    ious, per_out = match_polygons(gdf.geometry, refs)
    assert len(gdf) == 3 and ious.min() > 0.999 and (per_out == 1).all()
    # the default (auto) stretch also runs on every type
    auto = sg.vectorize(path, None, generator=LabelSegmenter(), progress=False)
    assert len(auto) >= 2


def test_only_windows_are_read(kampala_truth, monkeypatch):
    """Tiles are read window by window; nothing reads the whole raster."""
    path = kampala_truth[0]
    reads = []
    orig_read, orig_masks = rasterio.io.DatasetReader.read, rasterio.io.DatasetReader.read_masks

    def read(self, *a, **kw):
        out = orig_read(self, *a, **kw)
        reads.append(out.shape[-2] * out.shape[-1])
        return out

    def read_masks(self, *a, **kw):
        out = orig_masks(self, *a, **kw)
        reads.append(out.shape[-2] * out.shape[-1])
        return out

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", read)
    monkeypatch.setattr(rasterio.io.DatasetReader, "read_masks", read_masks)
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), tile_size=256, overlap=32, progress=False)
    assert len(gdf) > 50 and len(reads) >= 16
    assert max(reads) <= 256 * 256


def test_raster_smaller_than_a_tile(tmp_path):
    codes = np.zeros((30, 20), np.uint32)
    codes[5:15, 5:15] = 3
    path, transform = synthetic_raster(tmp_path / "small.tif", codes)
    gdf = sg.vectorize(path, None, generator=LabelSegmenter(), tile_size=1024, progress=False)
    assert len(gdf) == 1 and gdf["area_px"].iloc[0] == 100
    assert shapely.equals(gdf.geometry.iloc[0], reference_regions(codes, transform)[0][0])


@pytest.mark.parametrize("path_kind", ["overviews", "window_grid"])
def test_stretch_sample_of_large_rasters(tmp_path, monkeypatch, path_kind):
    """Without reading the whole raster: from overviews when present, else from a grid of small
    windows; nodata never counts."""
    import samkit.geo.raster as georaster

    h, w = 1200, 1500
    rng = np.random.default_rng(1)
    data = (rng.gamma(2.0, 400.0, (h, w)) + 100).astype(np.uint16)
    data[:, :300] = 0  # nodata
    path = tmp_path / "big16.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint16", nodata=0,
                       crs="EPSG:32633", transform=Affine(1, 0, 0, 0, -1, 0), tiled=True) as ds:
        ds.write(data, 1)
        if path_kind == "overviews":
            ds.build_overviews([2, 4, 8], rasterio.enums.Resampling.nearest)
    monkeypatch.setattr(georaster, "STRETCH_SAMPLE_PIXELS", 40_000)
    if path_kind == "window_grid":
        monkeypatch.setattr(georaster, "DECIMATED_READ_MAX_PIXELS", 100_000)
    reads = []
    orig = rasterio.io.DatasetReader.read

    def read(self, *a, **kw):
        out = orig(self, *a, **kw)
        reads.append(out.shape[-2] * out.shape[-1])
        return out

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", read)
    ds, spec, _, _ = georaster.prepare(path)
    ds.close()
    (lo, hi), = spec.stretch
    true_lo, true_hi = np.percentile(data[:, 300:], [2, 98])
    assert abs(lo - true_lo) < 0.05 * true_lo and abs(hi - true_hi) < 0.05 * true_hi
    assert max(reads) <= 40_000  # never more than the sample budget in one read


def test_progress_bar_counts_tiles(kampala_truth, capsys):
    sg.vectorize(kampala_truth[0], None, generator=LabelSegmenter(), tile_size=256, overlap=32, progress=True)
    err = capsys.readouterr().err
    assert "tiles" in err and "25/25" in err


def test_vrt_input(kampala_truth, tmp_path):
    """Any raster GDAL reads: here a VRT over the label GeoTIFF gives the same objects."""
    path = kampala_truth[0]
    with rasterio.open(path) as ds:
        w, h, t, crs = ds.width, ds.height, ds.transform, ds.crs.to_wkt()
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{ci}</ColorInterp><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{path}</SourceFilename><SourceBand>{b}</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
        f"</SimpleSource></VRTRasterBand>" for b, ci in [(1, "Red"), (2, "Green"), (3, "Blue")])
    from xml.sax.saxutils import escape

    vrt = tmp_path / "labels.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{escape(crs)}</SRS>'
                   f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>{bands}</VRTDataset>")
    a = sg.vectorize(vrt, None, generator=LabelSegmenter(), tile_size=256, overlap=32, progress=False)
    b = sg.vectorize(path, None, generator=LabelSegmenter(), tile_size=256, overlap=32, progress=False)
    assert sg.info(vrt)["driver"] == "VRT"
    assert len(a) == len(b) > 90 and all(x.equals(y) for x, y in zip(a.geometry, b.geometry))


def test_crs_only_assigns_one_to_a_raster_without(tmp_path):
    codes = np.zeros((64, 64), np.uint32)
    codes[10:40, 10:40] = 0x0A0A0A
    path, _ = synthetic_raster(tmp_path / "utm.tif", codes, crs="EPSG:32633")
    with pytest.raises(GeoError, match="already has a CRS.*to_crs"):
        sg.vectorize(path, None, generator=LabelSegmenter(), crs="EPSG:4326", progress=False)
    same = sg.vectorize(path, None, generator=LabelSegmenter(), crs="EPSG:32633", progress=False)
    assert same.crs.to_epsg() == 32633 and len(same) == 1


@pytest.mark.parametrize("nodata", [-1, 256, 0.5])
def test_nodata_the_pixels_cannot_hold_is_refused(tmp_path, nodata):
    codes = np.zeros((64, 64), np.uint32)
    codes[10:40, 10:40] = 0x0A0A0A
    path, _ = synthetic_raster(tmp_path / "u8.tif", codes)
    with pytest.raises(GeoError, match=f"nodata {nodata:g} cannot occur in .*uint8"):
        sg.vectorize(path, None, generator=LabelSegmenter(), nodata=nodata, progress=False)


def test_damaged_pixel_data_is_one_clear_error(tmp_path):
    """A file whose header reads but whose pixel blocks are cut off: a GeoError, not a rasterio
    traceback from inside a tile."""
    cut = write_truncated_raster(tmp_path / "cut.tif", tmp_path)
    with pytest.raises(GeoError, match="damaged or truncated"):
        sg.vectorize(cut, None, generator=LabelSegmenter(), tile_size=256, overlap=32, stretch=(0, 255),
                     progress=False)


def test_open_dataset_stays_open_and_small_tiles_get_a_fitting_overlap(tmp_path):
    """A dataset the caller opened is not closed for them; tiles under 512 px without an overlap
    given get a quarter of a tile (the default 128 would be half a 256 px tile, refused)."""
    codes = np.zeros((600, 600), np.uint32)
    codes[100:400, 100:400] = 0x0A0A0A
    path, _ = synthetic_raster(tmp_path / "s.tif", codes)
    with rasterio.open(path) as ds:
        gdf = sg.vectorize(ds, None, generator=LabelSegmenter(), tile_size=256, progress=False)
        assert not ds.closed and len(gdf) == 1
        assert sg.info(ds, tile_size=256)["overlap"] == 64 and not ds.closed
