"""What failed and killed runs leave behind: only what a re-run can use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import geopandas as gpd
import numpy as np
import pytest
from geo_helpers import synthetic_raster, write_truncated_raster

import samkit
import samkit.geo as sg
from samkit.geo import GeoError
from samkit.geo.testing import LabelSegmenter


@pytest.fixture()
def small_raster(tmp_path_factory):
    """300 x 200 px, EPSG:32633, three objects."""
    codes = np.zeros((200, 300), np.uint32)
    codes[20:60, 30:90] = 0x102030
    codes[100:180, 150:200] = 0x405060
    codes[10:30, 250:290] = 0x708090
    path, _ = synthetic_raster(tmp_path_factory.mktemp("src") / "small.tif", codes)
    return path


def _dead_pid() -> int:
    """The PID of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_model_that_does_not_load_leaves_no_checkpoint_directory(geo_dir, tmp_path):
    src = geo_dir / "rasterio__shade.tif"
    with pytest.raises(samkit.SamkitError, match="no checkpoint file"):
        sg.vectorize(src, tmp_path / "o.gpkg", model=str(tmp_path / "missing.pth"), progress=False)
    assert os.listdir(tmp_path) == []


def test_a_damaged_raster_found_mid_run_leaves_no_checkpoint_directory(tmp_path):
    """Tiles before the damaged blocks were stored, but the raster has to be replaced, which makes
    them another job's results: nothing to resume."""
    (tmp_path / "src").mkdir()
    src = write_truncated_raster(tmp_path / "src" / "cut.tif", tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    gen = LabelSegmenter(min_area=1000)  # noise: no objects, but every tile's result is stored
    with pytest.raises(GeoError, match="damaged or truncated"):
        sg.vectorize(src, out / "o.gpkg", generator=gen, tile_size=256, overlap=32, stretch=(0, 255),
                     progress=False)
    assert gen.calls >= 1  # some tiles were done and stored before the damage was found
    assert os.listdir(out) == []


def test_no_objects_leaves_no_checkpoints_unless_kept(geo_dir, tmp_path):
    class Nothing:
        def generate(self, image):
            return []

    with pytest.raises(GeoError, match="no objects found.*nothing was written"):
        sg.vectorize(geo_dir / "rasterio__shade.tif", tmp_path / "o.gpkg", generator=Nothing(), progress=False)
    assert os.listdir(tmp_path) == []
    with pytest.raises(GeoError, match="no objects found"):
        sg.vectorize(geo_dir / "rasterio__shade.tif", tmp_path / "o.gpkg", generator=Nothing(), progress=False,
                     keep_checkpoints=True)
    assert os.listdir(tmp_path) == [".o.gpkg.samkit-tiles"]


def test_a_checkpoint_dir_under_a_missing_folder_is_refused_before_any_work(small_raster, tmp_path):
    """The rule of every samkit output: the folder named is made, the folders above it never are."""
    gen = LabelSegmenter()
    with pytest.raises(GeoError, match=r"checkpoint directory: cannot create .*no.* does not exist"):
        sg.vectorize(small_raster, tmp_path / "o.gpkg", generator=gen, checkpoint_dir=tmp_path / "no" / "ck",
                     progress=False)
    assert gen.calls == 0 and os.listdir(tmp_path) == []


KILLED_WHILE_WRITING = textwrap.dedent("""
    import os, signal, sys
    import geopandas as gpd
    import samkit.geo as sg
    from samkit.geo.testing import LabelSegmenter

    real = gpd.GeoDataFrame.to_file

    def write_then_die(self, path, *a, **kw):
        real(self, path, *a, **kw)
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 before the temporary file is renamed

    gpd.GeoDataFrame.to_file = write_then_die
    sg.vectorize(sys.argv[1], sys.argv[2], generator=LabelSegmenter(), tile_size=512, progress=False)
""")


@pytest.mark.parametrize("ext", ["gpkg", "shp"])
def test_temporary_files_of_a_killed_run_are_removed_by_the_next(small_raster, tmp_path, ext):
    src = small_raster
    out = tmp_path / f"o.{ext}"
    res = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, str(src), str(out)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == -9, res.stderr
    left = [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    assert left, "the killed run should have left its temporary output"
    # not ours to remove: a running process's temporary file, other outputs' and other names
    keep = [f".o.tmp-{os.getpid()}-0123abcd.{ext}", f".other.tmp-{_dead_pid()}-0123abcd.{ext}",
            f".o.tmp-{_dead_pid()}-0123abcd.txt", "o.tmp-1-0123abcd.gpkg"]
    for name in keep:
        (tmp_path / name).write_text("x")
    sg.vectorize(src, out, generator=LabelSegmenter(), tile_size=512, progress=False)
    names = sorted(os.listdir(tmp_path))
    assert not set(left) & set(names)
    written = ["o.cpg", "o.dbf", "o.prj", "o.shp", "o.shx"] if ext == "shp" else ["o.gpkg"]
    assert names == sorted(written + keep)


def test_a_temporary_whose_pid_was_reused_is_removed(small_raster, tmp_path):
    """PIDs are reused (in a container every run may get the same one, even this process's): a
    temporary file last written before its PID's running process started is a killed run's and
    goes; one written since may be that process's own and stays."""
    import samkit.geo as sg
    from samkit.geo.testing import LabelSegmenter

    out = tmp_path / "o.gpkg"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        stale = [f".o.tmp-{child.pid}-0123abcd.gpkg", f".o.tmp-{os.getpid()}-4567cdef.gpkg"]
        live = [f".o.tmp-{child.pid}-89abcdef.gpkg"]
        for name in stale + live:
            (tmp_path / name).write_text("x")
        day_ago = time.time() - 86400
        for name in stale:
            os.utime(tmp_path / name, (day_ago, day_ago))
        sg.vectorize(small_raster, out, generator=LabelSegmenter(), tile_size=512, progress=False)
        assert sorted(os.listdir(tmp_path)) == sorted(["o.gpkg", *live])
    finally:
        child.kill()
        child.wait()


def test_overwriting_a_shapefile_replaces_all_its_files(small_raster, tmp_path):
    src = small_raster
    out = tmp_path / "o.shp"
    sg.vectorize(src, out, generator=LabelSegmenter(), tile_size=512, progress=False)
    fresh = sorted(os.listdir(tmp_path))
    # what other tools add to a shapefile: metadata, spatial and attribute indexes
    stale = ["o.shp.xml", "o.qix", "o.sbn", "o.sbx", "o.aih", "o.ain", "o.QIX"]
    for name in stale:
        (tmp_path / name).write_text("stale")
    (tmp_path / "other.shp.xml").write_text("another file's metadata")
    sg.vectorize(src, out, generator=LabelSegmenter(), tile_size=512, progress=False, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == sorted(fresh + ["other.shp.xml"])
    assert len(gpd.read_file(out)) > 0


def test_a_checkpoint_dir_with_other_files_keeps_them(small_raster, tmp_path):
    """Removing the checkpoints (after success, or after a failure with nothing to resume) deletes
    samkit's files, never a directory the user named with their own files in it."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    sg.vectorize(small_raster, tmp_path / "o.gpkg", generator=LabelSegmenter(), checkpoint_dir=mine, progress=False)
    assert os.listdir(mine) == ["notes.txt"]
    with pytest.raises(samkit.SamkitError, match="no checkpoint file"):
        sg.vectorize(small_raster, tmp_path / "p.gpkg", model=str(tmp_path / "missing.pth"), checkpoint_dir=mine,
                     progress=False)
    assert os.listdir(mine) == ["notes.txt"]
    # a directory samkit made is removed with its results
    sg.vectorize(small_raster, tmp_path / "q.gpkg", generator=LabelSegmenter(), checkpoint_dir=tmp_path / "ck",
                 progress=False)
    assert not (tmp_path / "ck").exists()


@pytest.fixture()
def raster_server(tmp_path):
    """(url of a 1024 x 1024 tiled GeoTIFF served over HTTP with Range support, the FAIL switch)."""
    from affine import Affine
    import rasterio

    root = tmp_path / "www"
    root.mkdir()
    profile = dict(driver="GTiff", width=1024, height=1024, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(0.5, 0, 500000, 0, -0.5, 5000000), tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(root / "scene.tif", "w", **profile) as dst:
        # background only (LabelSegmenter finds no objects quickly), but every block is written
        dst.write(np.zeros((3, 1024, 1024), dtype=np.uint8))
    server = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "range_server.py"), str(root)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        yield f"http://127.0.0.1:{port}/scene.tif", root / "FAIL"
    finally:
        server.kill()
        server.wait()


def test_a_network_failure_keeps_the_tiles_a_rerun_resumes_from(raster_server, tmp_path, monkeypatch):
    """A raster read over HTTP whose server stops answering mid-run: not "damaged", and the
    finished tiles stay for the re-run, which does only the rest."""
    url, fail = raster_server
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")  # a server that is gone: retrying only waits longer

    class FailingNetwork(LabelSegmenter):
        fingerprint = "labels, min_area 1e6"  # the same job for both runs, whatever fail_after is

        def __init__(self, fail_after=None):
            super().__init__(min_area=10**6)  # no objects, but every tile's result is stored
            self.fail_after = fail_after

        def generate(self, image):
            if self.calls == self.fail_after:
                fail.touch()  # the server goes away
            return super().generate(image)

    checkpoints = tmp_path / "checkpoints"
    options = dict(tile_size=256, overlap=32, stretch=(0, 255), checkpoint_dir=checkpoints, progress=False)
    first = FailingNetwork(fail_after=3)
    with pytest.raises(sg.RemoteReadError, match="over the network.*run the same command again to resume") as info:
        sg.vectorize(url, tmp_path / "o.gpkg", generator=first, **options)
    assert "damaged" not in str(info.value)
    stored = len(list(checkpoints.glob("r*c*.npz")))
    assert stored >= 3
    fail.unlink()
    second = FailingNetwork()
    sg.vectorize(url, tmp_path / "o.gpkg", generator=second, allow_empty=True, **options)
    total = len(sg.TileGrid(1024, 1024, 256, 32))
    assert second.calls == total - stored


def test_a_failed_network_read_is_retried(raster_server, tmp_path, monkeypatch):
    """A busy server answers a few pixel reads with 503 once: GDAL, which by default gives up at
    the first failure, is told to retry, so the run finishes. With retries turned off (the
    user's GDAL_HTTP_MAX_RETRY is kept) the same server stops it."""
    url, fail = raster_server
    flaky = fail.with_name("FLAKY")
    options = dict(tile_size=256, overlap=32, stretch=(0, 255), allow_empty=True, progress=False)
    total = len(sg.TileGrid(1024, 1024, 256, 32))

    # 4 failures in a row: GDAL splits a failed read of several blocks into smaller ones, which
    # absorbs 3, but not a 4th
    flaky.write_text("4")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    with pytest.raises(sg.RemoteReadError):
        sg.vectorize(url, tmp_path / "off.gpkg", generator=LabelSegmenter(min_area=10**6),
                     checkpoint_dir=tmp_path / "off", **options)

    # a copy under another name: GDAL keeps what it read of a URL for the process
    shutil.copy(fail.with_name("scene.tif"), fail.with_name("again.tif"))
    flaky.write_text("4")
    monkeypatch.delenv("GDAL_HTTP_MAX_RETRY")
    segmenter = LabelSegmenter(min_area=10**6)
    sg.vectorize(url.replace("scene.tif", "again.tif"), tmp_path / "on.gpkg", generator=segmenter, **options)
    assert segmenter.calls == total
    assert len(flaky.read_text().split("\n")) == 5  # all four 503s were sent, and retried
