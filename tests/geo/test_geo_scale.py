"""Large jobs: resume after an interruption, Dask gives the same result, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

import samkit.geo as sg
from samkit.geo import TileGrid
from samkit.geo.testing import LabelSegmenter


class Interruptible(LabelSegmenter):
    """LabelSegmenter that raises KeyboardInterrupt (a user's Ctrl-C) on its ``stop_after``+1-th
    call. ``fingerprint`` says it segments exactly like any other Interruptible."""

    fingerprint = "label-segmenter-v1"

    def __init__(self, stop_after=None):
        super().__init__()
        self.stop_after = stop_after

    def generate(self, image):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        return super().generate(image)


def _same(a, b):
    assert len(a) == len(b)
    assert list(a["id"]) == list(b["id"])
    for col in ["score", "stability_score", "area_m2", "area_px", "n_tiles"]:
        assert np.allclose(a[col], b[col]), col
    assert list(a["tile"]) == list(b["tile"])
    assert all(x.equals_exact(y, 1e-9) for x, y in zip(a.geometry, b.geometry))


def test_interrupted_run_resumes_where_it_stopped(kampala_truth, tmp_path):
    src = kampala_truth[0]
    out = tmp_path / "k.gpkg"
    n_tiles = len(TileGrid(1024, 1024, 192, 32))
    reference = sg.vectorize(src, None, generator=LabelSegmenter(), tile_size=192, overlap=32, progress=False)

    with pytest.raises(KeyboardInterrupt):
        sg.vectorize(src, out, generator=Interruptible(stop_after=13), tile_size=192, overlap=32, progress=False)
    assert not out.exists()
    ckpt = tmp_path / ".k.gpkg.samkit-tiles"
    assert len(list(ckpt.glob("r*c*.npz"))) == 13

    gen = Interruptible()
    gdf = sg.vectorize(src, out, generator=gen, tile_size=192, overlap=32, progress=False)
    assert gen.calls == n_tiles - 13, "finished tiles must not be segmented again"
    _same(gdf, reference)
    _same(gpd.read_file(out), reference)
    assert not ckpt.exists(), "checkpoints are removed after success"


def test_checkpoints_of_another_job_are_not_reused(kampala_truth, tmp_path):
    src = kampala_truth[0]
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        sg.vectorize(src, tmp_path / "a.gpkg", generator=Interruptible(stop_after=5), tile_size=256, overlap=32,
                     checkpoint_dir=ckpt, progress=False)
    # another segmenter: everything is recomputed
    gen = LabelSegmenter()
    sg.vectorize(src, tmp_path / "a.gpkg", generator=gen, tile_size=256, overlap=32, checkpoint_dir=ckpt,
                 progress=False, keep_checkpoints=True)
    assert gen.calls == len(TileGrid(1024, 1024, 256, 32))
    assert len(list(ckpt.glob("r*c*.npz"))) == gen.calls  # kept on request
    # resume=False ignores even matching checkpoints
    gen = LabelSegmenter()
    sg.vectorize(src, tmp_path / "b.gpkg", generator=gen, tile_size=256, overlap=32, checkpoint_dir=ckpt,
                 progress=False, resume=False)
    assert gen.calls == len(TileGrid(1024, 1024, 256, 32))
    # a different tile grid is another job too
    gen = LabelSegmenter()
    sg.vectorize(src, tmp_path / "c.gpkg", generator=gen, tile_size=300, overlap=32, checkpoint_dir=ckpt,
                 progress=False)
    assert gen.calls == len(TileGrid(1024, 1024, 300, 32))


def test_dask_cluster_gives_the_same_result(kampala_truth, atlanta_truth, tmp_path):
    from distributed import LocalCluster

    src = kampala_truth[0]
    reference = sg.vectorize(src, None, generator=LabelSegmenter(score_of=lambda c: (c % 89) / 100),
                             tile_size=200, overlap=40, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        gdf = sg.vectorize(src, tmp_path / "k.gpkg", generator=LabelSegmenter(score_of=lambda c: (c % 89) / 100),
                           tile_size=200, overlap=40, dask=cluster.scheduler_address, progress=False)
        # the tiles really ran in the workers
        from distributed import Client

        with Client(cluster.scheduler_address) as client:
            worked = client.run(lambda: sum(1 for k in __import__("sys").modules if k == "samkit.geo.pieces"))
    assert len(worked) == 2
    _same(gdf, reference)
    # a local cluster of N worker processes, started and stopped by vectorize
    src2 = atlanta_truth[0]
    ref2 = sg.vectorize(src2, None, generator=LabelSegmenter(), tile_size=160, overlap=24, progress=False)
    _same(sg.vectorize(src2, None, generator=LabelSegmenter(), tile_size=160, overlap=24, dask=2, progress=False),
          ref2)


BIG = 20000
PERIOD, RECT_H, RECT_W = 400, 90, 150  # one rectangle every 400 px: 50 x 50 = 2500 objects


def _write_big(path):
    profile = dict(driver="GTiff", width=BIG, height=BIG, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=rasterio.Affine(0.5, 0, 500000, 0, -0.5, 5000000), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", photometric="RGB")
    with rasterio.open(path, "w", **profile) as out:
        step = 2048
        for r0 in range(0, BIG, step):
            for c0 in range(0, BIG, step):
                h, w = min(step, BIG - r0), min(step, BIG - c0)
                rr = np.arange(r0, r0 + h)[:, None]
                cc = np.arange(c0, c0 + w)[None, :]
                on = ((rr % PERIOD) < RECT_H) & ((cc % PERIOD) < RECT_W)
                code = np.where(on, (rr // PERIOD) * 97 + (cc // PERIOD) * 3 + 1, 0).astype(np.uint32)
                out.write(np.stack([code & 255, (code >> 8) & 255, (code >> 16) & 255]).astype(np.uint8),
                          window=Window(c0, r0, w, h))


def test_20000px_raster_in_bounded_memory(tmp_path):
    src = tmp_path / "big.tif"
    _write_big(src)
    assert os.path.getsize(src) < 50e6  # tiled and compressed: 1.2 GB of pixels
    script = textwrap.dedent(f"""
        import json, resource, sys
        import samkit.geo as sg
        from samkit.geo.testing import LabelSegmenter
        gdf = sg.vectorize({str(src)!r}, {str(tmp_path / 'big.gpkg')!r}, generator=LabelSegmenter(),
                           tile_size=1024, overlap=64, id_raster={str(tmp_path / 'ids.tif')!r}, progress=False)
        # VmHWM: this process image's own peak RSS (ru_maxrss would include the forking parent's)
        try:
            status = open("/proc/self/status").read()
            peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
        except OSError:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        json.dump({{"n": len(gdf), "peak": peak, "areas": sorted(set(gdf["area_px"])),
                   "crossing": int((gdf["n_tiles"] > 1).sum())}}, sys.stdout)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["n"] == (BIG // PERIOD) ** 2
    assert info["areas"] == [RECT_H * RECT_W], "every rectangle must come out whole, once"
    assert info["crossing"] > 500
    # the raster alone is 1.2 GB in memory; the whole job must stay far below that and 2 GB
    assert info["peak"] < 1.0e9, f"peak RSS {info['peak'] / 1e6:.0f} MB"
    with rasterio.open(tmp_path / "ids.tif") as ds:
        assert ds.block_shapes[0] == (512, 512) and ds.compression is not None
        assert ds.read(1, window=Window(0, 0, 400, 400)).max() > 0


def test_the_next_tile_is_read_while_this_one_is_segmented(tmp_path, monkeypatch):
    """An in-process run reads the next tile (for a remote raster: downloads it) in the
    background while the segmenter works on the current one; the polygons are those of the
    objects, as always."""
    import threading

    from geo_helpers import match_polygons, reference_regions, synthetic_raster

    from samkit.geo import pieces

    codes = np.zeros((600, 600), np.uint32)
    for i, (r, c) in enumerate([(40, 40), (40, 300), (300, 40), (300, 300), (200, 200), (480, 480)]):
        codes[r:r + 70, c:c + 90] = 1000 + 97 * i
    path, transform = synthetic_raster(tmp_path / "rects.tif", codes)  # no nodata: every tile is segmented
    reads, readers = [threading.Event() for _ in range(64)], set()
    count = [0]
    real_read_valid = pieces.read_valid

    def read_valid(ds, spec, window):
        readers.add(threading.current_thread().name)
        reads[count[0]].set()
        count[0] += 1
        return real_read_valid(ds, spec, window)

    monkeypatch.setattr(pieces, "read_valid", read_valid)
    overlapped = []
    tiles = len(TileGrid(600, 600, 256, 32).tiles)

    class Watching(LabelSegmenter):
        def generate(self, image):
            if self.calls + 1 < tiles:  # tile k+1's read has begun before tile k is segmented
                overlapped.append(reads[self.calls + 1].wait(10))
            return super().generate(image)

    segmenter = Watching()
    gdf = sg.vectorize(path, None, generator=segmenter, tile_size=256, overlap=32, progress=False)
    assert tiles > 4 and count[0] == segmenter.calls == tiles
    assert overlapped == [True] * (tiles - 1)
    assert readers == {"samkit-prefetch_0"}
    ious, _ = match_polygons(gdf.geometry, [g for g, _ in reference_regions(codes, transform)])
    assert len(gdf) == 6 and ious.min() > 0.99
