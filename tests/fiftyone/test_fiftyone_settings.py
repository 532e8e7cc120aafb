"""The plugin's settings under samkit's one spelling: GeneratorOptions' names and defaults, dtype,
SAMKIT_MODEL / SAMKIT_CHECKPOINT as everywhere (samkit.models), models loaded once per process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fiftyone.operators as foo

import samkit
from samkit.fiftyone import SamModel
from samkit.fiftyone.operators import _model_settings
from samkit.fiftyone.segmenter import EVERYTHING_DEFAULTS
from samkit.models import MODEL_CACHE
from samkit.options import GeneratorOptions, SamkitDeprecationWarning


@pytest.fixture
def fresh_models():
    MODEL_CACHE.clear()
    yield MODEL_CACHE
    MODEL_CACHE.clear()


def test_defaults_are_generator_options(checkpoint, fresh_models):
    assert EVERYTHING_DEFAULTS == {name: getattr(GeneratorOptions(), name) for name in EVERYTHING_DEFAULTS}
    assert EVERYTHING_DEFAULTS["pred_iou_thresh"] is None  # the model family's
    model = SamModel(model=checkpoint, points_per_side=2, stability_score_thresh=0.0)
    model.segmenter.everything(np.zeros((40, 60, 3), np.uint8))
    assert model.segmenter._generator.options.pred_iou_thresh == 0.88  # SAM 1's, from the registry


def test_dtype_and_one_model_per_process(checkpoint, fresh_models, monkeypatch):
    loads = fresh_models.loads
    bf16 = SamModel(model=checkpoint, device="cpu", dtype="bfloat16")
    assert bf16.segmenter.model.compute_dtype == torch.bfloat16
    plain = SamModel(model=checkpoint, device="cpu")
    assert plain.segmenter.model.compute_dtype == torch.float32
    assert SamModel(model=checkpoint, device="cpu").segmenter.model is plain.segmenter.model
    assert fresh_models.loads == loads + 2
    # no model named: SAMKIT_MODEL is read too (it was ignored here before)
    monkeypatch.setenv("SAMKIT_MODEL", checkpoint)
    assert SamModel(device="cpu").segmenter.model is plain.segmenter.model and fresh_models.loads == loads + 2


class _Ctx:
    def __init__(self, secrets):
        self.secrets = secrets

    def secret(self, key):
        return self.secrets.get(key)


def test_operator_model_settings_from_the_executing_process(checkpoint, tmp_path):
    # no secrets backend (or none set): left to samkit.get_model, which reads os.environ
    assert _model_settings(_Ctx({}), "", "") == {"model": None, "device": None, "dtype": None}
    assert _model_settings(_Ctx({}), checkpoint, "bfloat16") == {"model": checkpoint, "device": None,
                                                                  "dtype": "bfloat16"}
    secrets = {"SAMKIT_MODEL": "vit_b", "SAMKIT_DEVICE": "cpu", "SAMKIT_DTYPE": "bfloat16"}
    assert _model_settings(_Ctx(secrets), "", "") == {"model": "vit_b", "device": "cpu", "dtype": "bfloat16"}
    chosen = _model_settings(_Ctx({**secrets, "SAMKIT_CHECKPOINT": checkpoint}), "", "float32")
    assert chosen == {"model": checkpoint, "device": "cpu", "dtype": "float32"}  # the form's dtype wins
    assert _model_settings(_Ctx({**secrets, "SAMKIT_CHECKPOINT": checkpoint}), "vit_l", "")["model"] == "vit_l"
    with pytest.warns(SamkitDeprecationWarning, match="SAMKIT_MODEL=vit_h"):
        assert _model_settings(_Ctx({"SAMKIT_CHECKPOINT": "vit_h"}), "", "")["model"] == "vit_h"


def test_operator_runs_in_the_dtype_asked_for(make_dataset, photos, checkpoint, fresh_models):
    dataset = make_dataset([photos["dog.jpg"]])
    params = {"output_field": "sam", "model": checkpoint, "dtype": "bfloat16", "points_per_side": 2,
              "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    summary = foo.execute_operator("@samkit/fiftyone/segment_everything",
                                   ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 1 and summary["failed"] == 0
    assert [key.dtype for key in fresh_models.keys()] == ["bfloat16"]
    assert samkit.get_model(checkpoint, dtype="bf16") is samkit.get_model(checkpoint, dtype="bfloat16")
