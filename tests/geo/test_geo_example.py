"""examples/geo_vectorize.py runs end to end on the real Kampala scene and draws a sensible PNG."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import geopandas as gpd
import numpy as np
from geo_helpers import KAMPALA, KAMPALA_LABELS
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "geo_vectorize.py"


def test_example_vectorises_and_plots(geo_dir, artifacts_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("geo_vectorize_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    png = artifacts_dir / "geo_vectorize_kampala.png"
    out = tmp_path / "kampala.gpkg"
    rc = example.main([str(geo_dir / KAMPALA), "--footprints", str(geo_dir / KAMPALA_LABELS), "--tile-size", "256",
                       "--overlap", "32", "-o", str(out), "--png", str(png)])
    assert rc == 0
    gdf = gpd.read_file(out)
    assert len(gdf) > 90 and (gdf["n_tiles"] > 1).sum() > 30
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (1024, 1024, 3)
    assert img.std() > 30  # the aerial image itself, not a blank canvas
