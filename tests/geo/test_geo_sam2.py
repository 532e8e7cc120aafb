"""The GIS tool takes a SAM 2.1 name with no change of its own: `samkit geo vectorize --model
sam2.1_t.pt` loads the SAM 2.1 Hiera-T (its official file in the cache: the seeded random one of
tests/sam2_files.py) through samkit.get_model and segments the raster with it."""

from __future__ import annotations

import shutil

import geopandas as gpd
import rasterio

from samkit.cli import main
from samkit.models import MODEL_CACHE


def test_vectorize_with_a_sam2_1_name(geo_dir, sam2_tiny_checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(sam2_tiny_checkpoint, cache / "sam2.1_hiera_tiny.pt")
    monkeypatch.setenv("SAMKIT_HOME", str(cache))
    raster = geo_dir / "rasterio__RGB.byte.tif"
    out = tmp_path / "objects.gpkg"
    MODEL_CACHE.clear()
    try:
        assert main(["geo", "vectorize", str(raster), "-o", str(out), "--model", "sam2.1_t.pt", "--device", "cpu",
                     "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                     "--allow-empty", "-q"]) == 0
        keys = MODEL_CACHE.keys()
        assert [key.checkpoint for key in keys] == ["sam2.1_hiera_tiny"]
    finally:
        MODEL_CACHE.clear()
    objects = gpd.read_file(out)
    with rasterio.open(raster) as ds:
        assert objects.crs == ds.crs
    assert len(objects) >= 1 and objects.geometry.is_valid.all()
