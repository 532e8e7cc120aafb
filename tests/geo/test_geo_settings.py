"""The GIS tool's settings under samkit's one spelling: GeneratorOptions' flags and names, the
deprecated --stability-thresh, --dtype, and the model from the SAMKIT_* variables (samkit.models)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
import torch

import samkit.geo as sg
from samkit.cli import build_parser
from samkit.geo import GeoError
from samkit.geo.generators import GeneratorSpec, fingerprint, resolve
from samkit.models import MODEL_CACHE
from samkit.options import SamkitDeprecationWarning


def _vectorize_args(*flags):
    return build_parser().parse_args(["geo", "vectorize", "r.tif", "-o", "o.gpkg", *flags])


def test_flags_are_the_official_names_and_the_old_one_still_works(caplog):
    from samkit.geo.cli import GENERATOR_OPTIONS
    from samkit.options import generator_arguments

    args = _vectorize_args("--stability-score-thresh", "0.5", "--pred-iou-thresh", "0.1", "--dtype", "bfloat16")
    assert generator_arguments(args, GENERATOR_OPTIONS) == {"stability_score_thresh": 0.5, "pred_iou_thresh": 0.1}
    assert args.dtype == "bfloat16" and args.model is None  # None: SAMKIT_CHECKPOINT / SAMKIT_MODEL / mobile_sam
    assert generator_arguments(_vectorize_args(), GENERATOR_OPTIONS) == {}  # GeneratorOptions' defaults
    with caplog.at_level(logging.WARNING, logger="samkit"):
        with pytest.warns(SamkitDeprecationWarning, match="use --stability-score-thresh"):
            args = _vectorize_args("--stability-thresh", "0.25")
    assert generator_arguments(args, GENERATOR_OPTIONS) == {"stability_score_thresh": 0.25}
    assert "--stability-thresh is deprecated: use --stability-score-thresh" in caplog.text


def test_generator_spec_takes_the_model_and_dtype_from_the_environment(mobile_sam_checkpoint, monkeypatch):
    monkeypatch.setenv("SAMKIT_MODEL", str(mobile_sam_checkpoint))
    monkeypatch.setenv("SAMKIT_DTYPE", "bfloat16")
    spec = GeneratorSpec.create(device="cpu", points_per_side=4, pred_iou_thresh=None)
    assert spec.model == str(mobile_sam_checkpoint) and spec.dtype == "bfloat16"
    assert dict(spec.options) == {"points_per_side": 4}  # None: GeneratorOptions' (the family's) default
    monkeypatch.delenv("SAMKIT_DTYPE")
    float32 = GeneratorSpec.create(device="cpu", points_per_side=4)
    assert float32.dtype is None and fingerprint(float32) != fingerprint(spec)  # bf16 tiles are other tiles
    with pytest.raises(GeoError, match="unknown segment-everything option.*stability_thresh"):
        GeneratorSpec.create(stability_thresh=0.5)
    MODEL_CACHE.clear()
    loads = MODEL_CACHE.loads
    try:
        first, second = resolve(spec), resolve(spec)  # one generator per tile, one model per process
        assert first.model is second.model and first.model.compute_dtype == torch.bfloat16
        assert first.options.pred_iou_thresh == 0.88 and first.options.points_per_side == 4
        assert MODEL_CACHE.loads == loads + 1
    finally:
        MODEL_CACHE.clear()


def test_prompts_run_in_the_dtype_asked_for(geo_dir, mobile_sam_checkpoint, tmp_path):
    raster = geo_dir / "rasterio__RGB.byte.tif"
    with rasterio.open(raster) as ds:
        b = ds.bounds
        cx, cy = (b.left + b.right) / 2, (b.bottom + b.top) / 2
    MODEL_CACHE.clear()
    try:
        gdf = sg.vectorize(raster, None, prompts={"points": [[cx, cy]], "crs": "raster"},
                           model=str(mobile_sam_checkpoint), device="cpu", dtype="bfloat16", allow_empty=True,
                           progress=False)
        assert [key.dtype for key in MODEL_CACHE.keys()] == ["bfloat16"]
        assert np.isfinite(gdf["stability_score"]).all()
    finally:
        MODEL_CACHE.clear()
