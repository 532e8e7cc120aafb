"""Bad input gives one clear message and writes nothing; the `samkit geo` commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from geo_helpers import KAMPALA, codes_to_rgb, match_polygons, reference_regions, synthetic_raster
from rasterio.control import GroundControlPoint

import samkit
import samkit.geo as sg
from samkit.geo import GeoError
from samkit.geo.testing import LabelSegmenter

SAMKIT = str(Path(sys.executable).with_name("samkit"))


class Nothing:
    def generate(self, image):
        return []


def _run(*args, user=None, env=None):
    kwargs = {}
    if user is not None:
        kwargs["user"] = user
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})}, **kwargs)


@pytest.fixture()
def nocrs_raster(tmp_path):
    codes = np.zeros((100, 120), np.uint32)
    codes[10:40, 10:60] = 0x102030
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=120, height=100, count=3, dtype="uint8",
                       transform=Affine(2, 0, 1000, 0, -2, 5000)) as ds:
        ds.write(codes_to_rgb(codes))
    assert rasterio.open(path).crs is None
    return path


def test_a_raster_without_georeferencing_gives_only_our_one_line(tmp_path):
    """rasterio warns (two lines) when it opens a raster without a geotransform; samkit's own
    error says it better, so the warning is not shown before it (nor by `geo info`)."""
    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=48, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 48, 64), np.uint8))
    proc = _run(SAMKIT, "geo", "vectorize", str(path), "-o", str(tmp_path / "o.gpkg"),
                "--generator", "samkit.geo.testing:LabelSegmenter")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("samkit: error: ") and "no CRS" in proc.stderr
    info = _run(SAMKIT, "geo", "info", str(path))
    assert info.returncode == 0 and "Warning" not in info.stderr, info.stderr


def test_geo_error_is_a_samkit_error():
    assert issubclass(GeoError, samkit.SamkitError)


def test_raster_without_crs(nocrs_raster, tmp_path):
    with pytest.raises(GeoError, match=r"no CRS.*--crs.*--pixel-space"):
        sg.vectorize(nocrs_raster, tmp_path / "o.gpkg", generator=LabelSegmenter(), progress=False)
    assert not (tmp_path / "o.gpkg").exists()
    gdf = sg.vectorize(nocrs_raster, tmp_path / "o.gpkg", generator=LabelSegmenter(), crs="EPSG:32633",
                       progress=False)
    assert gdf.crs.to_epsg() == 32633 and gdf.total_bounds[0] == 1020
    px = sg.vectorize(nocrs_raster, None, generator=LabelSegmenter(), pixel_space=True, progress=False)
    assert px.crs is None and tuple(px.total_bounds) == (10, 10, 60, 40)
    with pytest.raises(GeoError, match="not a CRS"):
        sg.vectorize(nocrs_raster, None, generator=LabelSegmenter(), crs="EPSG:99999999", progress=False)


def test_raster_with_only_gcps(tmp_path):
    path = tmp_path / "gcps.tif"
    gcps = [GroundControlPoint(0, 0, 10, 50), GroundControlPoint(0, 99, 10.1, 50),
            GroundControlPoint(99, 99, 10.1, 49.9)]
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint8") as ds:
        ds.write(np.ones((1, 100, 100), np.uint8))
        ds.gcps = (gcps, rasterio.crs.CRS.from_epsg(4326))
    with pytest.raises(GeoError, match="ground control points.*gdalwarp"):
        sg.vectorize(path, None, generator=LabelSegmenter(), progress=False)


def test_nothing_found(geo_dir, tmp_path):
    src = geo_dir / "rasterio__RGB.byte.tif"
    out = tmp_path / "o.gpkg"
    with pytest.raises(GeoError, match="no objects found.*nothing was written.*allow_empty"):
        sg.vectorize(src, out, generator=Nothing(), progress=False)
    assert os.listdir(tmp_path) == []  # "nothing was written": no hidden tile folder either
    gdf = sg.vectorize(src, out, generator=Nothing(), allow_empty=True, progress=False)
    back = gpd.read_file(out)
    assert len(gdf) == len(back) == 0 and back.crs.to_epsg() == 32618
    assert {"id", "score", "stability_score", "area_m2", "tile"} <= set(back.columns)


@pytest.mark.parametrize("dst,match", [("", "no output path"), ("o.tif", "cannot tell the output format"),
                                       ("missing_dir/o.gpkg", "does not exist"), ("adir.gpkg", "is a directory")])
def test_bad_output_paths(geo_dir, tmp_path, dst, match):
    (tmp_path / "adir.gpkg").mkdir()
    with pytest.raises(GeoError, match=match):
        sg.vectorize(geo_dir / "rasterio__shade.tif", str(tmp_path / dst) if dst else "",
                     generator=LabelSegmenter(), progress=False)


def test_bad_inputs(geo_dir, tmp_path):
    with pytest.raises(GeoError, match="not found"):
        sg.vectorize(tmp_path / "nope.tif", None, generator=LabelSegmenter())
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(GeoError, match="cannot read raster"):
        sg.vectorize(junk, None, generator=LabelSegmenter())
    src = geo_dir / "rasterio__shade.tif"
    with pytest.raises(GeoError, match="is the input raster"):
        sg.vectorize(src, tmp_path / "o.gpkg", generator=LabelSegmenter(), id_raster=src, overwrite=True)
    with pytest.raises(GeoError, match="generate"):
        sg.vectorize(src, None, generator=object(), progress=False)
    with pytest.raises(GeoError, match="overlap"):
        sg.vectorize(src, None, generator=LabelSegmenter(), tile_size=256, overlap=200)


@pytest.fixture()
def read_only_dir():
    """A directory nobody can create files in, root included: made immutable (chattr +i) when
    running as root, where permission bits do not bind; else mode 0555."""
    d = Path(tempfile.mkdtemp(prefix="samkit-ro-", dir="/tmp"))
    how = "chmod"
    if os.geteuid() == 0:
        res = subprocess.run(["chattr", "+i", str(d)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail(f"cannot make a read-only directory as root (chattr +i failed: {res.stderr.strip()})")
        how = "chattr"
    else:
        os.chmod(d, 0o555)
    try:
        yield d
    finally:
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(d)], check=True)
        os.chmod(d, 0o755)
        shutil.rmtree(d)


def test_read_only_output_directory(geo_dir, read_only_dir, capsys):
    """One clear message before any work, nothing written."""
    src = geo_dir / "rasterio__shade.tif"

    class MustNotRun:
        def generate(self, image):
            raise AssertionError("the output check must come before any tile is segmented")

    with pytest.raises(GeoError, match="not writable"):
        sg.vectorize(src, read_only_dir / "out.gpkg", generator=MustNotRun(), progress=False)
    with pytest.raises(GeoError, match="not writable"):
        sg.vectorize(src, None, id_raster=read_only_dir / "ids.tif", generator=MustNotRun(), progress=False)
    rc = _cli("geo", "vectorize", str(src), "-o", str(read_only_dir / "out.gpkg"), "--generator",
              "samkit.geo.testing:LabelSegmenter", "-q")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("samkit: error:") and "not writable" in err[0]
    assert os.listdir(read_only_dir) == []


def _cli(*argv):
    """The `samkit` command's own entry point, in this process."""
    from samkit.cli import main

    return main(list(argv))


def test_cli_module_imports_only_the_standard_library():
    code = ("import sys, samkit.geo.cli, samkit.geo; "
            "bad = [m for m in ('rasterio', 'geopandas', 'shapely', 'pyproj', 'pyogrio', 'distributed') "
            "if m in sys.modules]; print(bad)")
    res = _run(sys.executable, "-c", code)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


def test_cli_info(geo_dir, capsys):
    res = _run(SAMKIT, "geo", "info", str(geo_dir / "ftw__inference-img.tif"), "--tile-size", "256",
               "--overlap", "32", "--stats")
    assert res.returncode == 0, res.stderr
    assert "578 x 379 px, 8 band(s) uint16" in res.stdout and "EPSG:32633" in res.stdout
    assert "tiles:     6 (2 x 3) of 256 px" in res.stdout and "stretch:" in res.stdout
    rc = _cli("geo", "info", str(geo_dir / "riotiler__pix4d_alpha_nodata.tif"), "--json")
    d = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert d["nodata_source"] == "alpha" and d["default_bands"] == [1, 2, 3] and d["epsg"] == 32750


def test_cli_vectorize_exact(kampala_truth, tmp_path):
    path, codes, transform, _, _ = kampala_truth
    out = tmp_path / "k.fgb"
    res = _run(SAMKIT, "geo", "vectorize", str(path), "-o", str(out), "--tile-size", "256", "--overlap", "32",
               "--generator", "samkit.geo.testing:LabelSegmenter", "--id-raster", str(tmp_path / "ids.tif"),
               "--min-area", "0.5", "-q")
    assert res.returncode == 0, res.stderr
    refs = [g for g, _ in reference_regions(codes, transform) if g.area >= 0.5]
    gdf = gpd.read_file(out)
    assert f"wrote {len(refs)} polygon(s) to {out} (EPSG:3857)" in res.stdout
    ious, per_out = match_polygons(gdf.geometry, refs)
    assert len(gdf) == len(refs) and ious.min() > 0.999 and (per_out == 1).all()
    assert (tmp_path / "ids.tif").exists()
    # a second run refuses to overwrite, with one line (python -m samkit.geo is the same command)
    res = _run(sys.executable, "-m", "samkit.geo", "vectorize", str(path), "-o", str(out), "--generator",
               "samkit.geo.testing:LabelSegmenter", "-q")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "--overwrite" in res.stderr


def test_cli_errors_are_one_line(nocrs_raster, geo_dir, tmp_path, capsys):
    def run(*argv):
        rc = _cli(*argv)
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, out, err = run("geo", "vectorize", str(nocrs_raster), "-o", str(tmp_path / "o.gpkg"), "--generator",
                       "samkit.geo.testing:LabelSegmenter", "-q")
    assert rc == 2 and err.startswith("samkit: error:") and "--crs" in err and err.strip().count("\n") == 0
    rc, out, err = run("geo", "vectorize", str(nocrs_raster), "-o", str(tmp_path / "o.gpkg"), "--generator",
                       "samkit.geo.testing:LabelSegmenter", "--pixel-space", "-q")
    assert rc == 0 and "(pixel coordinates)" in out
    rc, out, err = run("geo", "prompt", str(geo_dir / KAMPALA), "-o", str(tmp_path / "p.gpkg"),
                       "--point", "32.6", "0.3")
    assert rc == 2 and "--prompt-crs" in err
    rc, out, err = run("geo", "vectorize", str(nocrs_raster), "-o", str(tmp_path / "x.gpkg"), "--generator",
                       "no.such.module:Thing", "-q")
    assert rc == 2 and "cannot import" in err
    rc, out, err = run("geo", "prompt", str(geo_dir / KAMPALA), "-o", str(tmp_path / "p.gpkg"))
    assert rc == 2 and "no prompts" in err


def test_missing_geo_extra_is_one_clear_line(geo_dir):
    code = ("import sys; sys.modules['rasterio'] = None\n"  # as if the geo extra were not installed
            "from samkit.cli import main\n"
            f"rc = main(['geo', 'info', {str(geo_dir / 'rasterio__shade.tif')!r}])\n"
            "import samkit.geo as sg\n"
            "try:\n    sg.vectorize\nexcept sg.GeoError as exc:\n    print('API:', exc)\n"
            "sys.exit(rc)")
    res = _run(sys.executable, "-c", code)
    assert res.returncode == 2
    assert res.stderr.strip() == ('samkit: error: the geo commands need the geo extra (rasterio is missing):'
                                  ' pip install "samkit[geo]"')
    assert 'pip install "samkit[geo]"' in res.stdout


@pytest.mark.parametrize("args, message", [
    (["--stretch", "v:a,b"], "samkit: error: --stretch v: needs numbers"),
    (["--points-per-side", "0"], "--points-per-side: must be at least 1"),
    (["--generator", "samkit.geo.testing:colour_codes"], "calling it without arguments failed"),
])
def test_bad_option_values_are_one_line_errors(geo_dir, tmp_path, args, message):
    args = ["--generator", "samkit.geo.testing:LabelSegmenter", *args] if "--generator" not in args else args
    out = _run(SAMKIT, "geo", "vectorize", str(geo_dir / "rasterio__RGB.byte.tif"), "-o", str(tmp_path / "o.gpkg"),
               "-q", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "o.gpkg").exists()


@pytest.mark.parametrize("args, message", [
    (["--iou-thresh", "5"], "--iou-thresh: must be in [0, 1], got 5"),
])
def test_out_of_range_tiling_options(geo_dir, tmp_path, args, message):
    out = _run(SAMKIT, "geo", "vectorize", str(geo_dir / "rasterio__RGB.byte.tif"), "-o", str(tmp_path / "o.gpkg"),
               "-q", "--generator", "samkit.geo.testing:LabelSegmenter", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_bands_may_be_separated_by_spaces(geo_dir):
    import rasterio

    from samkit.geo.raster import check_bands

    with rasterio.open(geo_dir / "rasterio__RGB.byte.tif") as ds:
        assert check_bands(ds, "3 2 1") == check_bands(ds, "3,2,1") == check_bands(ds, "3, 2, 1") == (3, 2, 1)


@pytest.mark.parametrize("raster, label", [
    ("rasterio__float_raster_with_nodata.tif", "IGNF:ETRS89LAEA"),
    ("solaris__sample_geotiff_custom_proj.tif", "custom Albers Equal Area on World Geodetic System 1984"),
])
def test_a_crs_without_epsg_code_is_named_not_unknown(geo_dir, tmp_path, capsys, raster, label):
    """IGNF codes and custom WKT CRSs (whose WKT names them "unknown"/"unnamed") are told apart."""
    src = str(geo_dir / raster)
    with rasterio.open(src) as ds:  # a few objects on that CRS (the real pixels would be thousands)
        crs = ds.crs
    codes = np.zeros((60, 80), np.uint32)
    codes[10:30, 10:50] = 0x102030
    small, _ = synthetic_raster(tmp_path / "small.tif", codes, crs=crs)
    rc = _cli("geo", "vectorize", str(small), "-o", str(tmp_path / "o.gpkg"), "--generator",
              "samkit.geo.testing:LabelSegmenter", "-q")
    out = capsys.readouterr().out
    assert rc == 0 and out.strip().endswith(f"({label})"), out
    rc = _cli("geo", "info", src)
    out = capsys.readouterr().out
    assert rc == 0 and f"crs:       {label} (no EPSG code)" in out, out
    rc = _cli("geo", "vectorize", src, "-o", str(tmp_path / "p.gpkg"), "--generator",
              "samkit.geo.testing:LabelSegmenter", "--crs", "EPSG:4326")
    err = capsys.readouterr().err
    assert rc == 2 and f"already has a CRS ({label} (no EPSG code))" in err, err
