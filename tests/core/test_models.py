"""The model every front end loads (samkit.models): the SAMKIT_* variables' one meaning, and one
bounded model cache per process."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

import samkit
from samkit.models import MODEL_CACHE, ModelCache, device_setting, dtype_setting, get_model, model_source
from samkit.options import SamkitDeprecationWarning


def test_model_source_order():
    env = {"SAMKIT_CHECKPOINT": "/ckpt/a.pt", "SAMKIT_MODEL": "vit_b"}
    assert model_source(environ={}) == "mobile_sam"
    assert model_source(environ={"SAMKIT_MODEL": "vit_l"}) == "vit_l"
    assert model_source(environ=env) == "/ckpt/a.pt"  # a checkpoint file wins over the model name
    assert model_source("vit_h", environ=env) == "vit_h"  # what is named explicitly wins over both
    assert model_source("vit_h", checkpoint="/x.pth", environ=env) == "/x.pth"
    assert model_source("  ", environ={"SAMKIT_CHECKPOINT": " ", "SAMKIT_MODEL": "vit_b"}) == "vit_b"  # blank: unset
    assert device_setting(environ={"SAMKIT_DEVICE": "auto"}) is None
    assert device_setting(environ={"SAMKIT_DEVICE": "cpu"}) == "cpu"
    assert device_setting("cuda", {"SAMKIT_DEVICE": "cpu"}) == "cuda"
    assert dtype_setting(environ={"SAMKIT_DTYPE": "bfloat16"}) == "bfloat16"
    assert dtype_setting(torch.float16, {"SAMKIT_DTYPE": "bfloat16"}) is torch.float16


def test_a_model_name_in_samkit_checkpoint_still_works_with_a_deprecation(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="samkit"):
        with pytest.warns(SamkitDeprecationWarning, match="SAMKIT_MODEL=vit_b"):
            assert model_source(environ={"SAMKIT_CHECKPOINT": "vit_b", "SAMKIT_MODEL": "vit_l"}) == "vit_b"
    assert "a model name in SAMKIT_CHECKPOINT (vit_b) is deprecated: use SAMKIT_MODEL=vit_b" in caplog.text
    # a file is what SAMKIT_CHECKPOINT is for, even one named like a model: no message
    named = tmp_path / "vit_b"
    named.write_bytes(b"")
    caplog.clear()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model_source(environ={"SAMKIT_CHECKPOINT": str(named)}) == str(named)
    assert not caplog.text


def test_one_cached_model_per_checkpoint_device_and_dtype(mobile_sam_checkpoint, tmp_path):
    cache = ModelCache(max_models=2)
    first = cache.get(str(mobile_sam_checkpoint), "cpu")
    assert cache.get(str(mobile_sam_checkpoint), "cpu") is first and cache.loads == 1
    assert cache.get(mobile_sam_checkpoint, None, "float32") is first and cache.loads == 1  # the same, spelled out
    bf16 = cache.get(str(mobile_sam_checkpoint), "cpu", "bfloat16")
    assert bf16 is not first and bf16.compute_dtype == torch.bfloat16 and cache.loads == 2
    # a copy elsewhere is another checkpoint; the least recently used model (float32) goes
    copy = tmp_path / "copy.pt"
    shutil.copy(mobile_sam_checkpoint, copy)
    third = cache.get(str(copy), "cpu")
    assert len(cache) == 2 and cache.loads == 3 and third is not first
    assert [key.dtype for key in cache.keys()] == ["bfloat16", "float32"]
    assert cache.get(str(mobile_sam_checkpoint), "cpu") is not first and cache.loads == 4  # loaded again
    # names and aliases of one registry model are one key (nothing loaded to tell)
    assert cache.key("vit_b") == cache.key("sam_b.pt") == cache.key("SAM_VIT_B_01EC64.PTH")
    assert cache.key("vit_b") != cache.key("vit_b", dtype="bf16") and cache.key("vit_b").device == "cpu"
    with pytest.raises(ValueError):
        ModelCache(max_models=0)


def test_get_model_reads_the_environment_and_keeps_the_model(mobile_sam_checkpoint, monkeypatch):
    MODEL_CACHE.clear()
    try:
        monkeypatch.setenv("SAMKIT_CHECKPOINT", str(mobile_sam_checkpoint))
        monkeypatch.setenv("SAMKIT_DEVICE", "cpu")
        monkeypatch.setenv("SAMKIT_DTYPE", "bfloat16")
        model = get_model()
        assert model.compute_dtype == torch.bfloat16 and model.checkpoint_path == str(mobile_sam_checkpoint)
        assert samkit.get_model(str(mobile_sam_checkpoint), "cpu", "bf16") is model and len(MODEL_CACHE) == 1
        assert get_model(model) is model  # a loaded model is used as it is
        monkeypatch.delenv("SAMKIT_DTYPE")
        assert get_model().compute_dtype == torch.float32 and len(MODEL_CACHE) == 2
    finally:
        MODEL_CACHE.clear()


def test_a_bad_checkpoint_is_not_cached(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not weights")
    cache = ModelCache()
    for _ in range(2):
        with pytest.raises(samkit.CheckpointError, match="cannot read checkpoint"):
            cache.get(str(bad), "cpu")
    assert len(cache) == 0
