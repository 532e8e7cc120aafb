"""The backend's settings under samkit's one spelling: SAMKIT_LS_<GeneratorOptions name>, defaults from
GeneratorOptions and the model family, SAMKIT_MODEL / SAMKIT_CHECKPOINT as everywhere (samkit.models);
the old spellings keep working with a deprecation message."""

from __future__ import annotations

import logging

import pytest

from samkit.options import GeneratorOptions, SamkitDeprecationWarning
from samkit.label_studio.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("SAMKIT_MODEL", "SAMKIT_CHECKPOINT", "SAMKIT_DEVICE", "SAMKIT_DTYPE", "SAMKIT_LS_PRED_IOU_THRESH",
                 "SAMKIT_LS_STABILITY_THRESH", "SAMKIT_LS_STABILITY_SCORE_THRESH", "SAMKIT_LS_POINTS_PER_SIDE"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_come_from_generator_options_and_the_model_family():
    settings = Settings.from_env()
    assert settings.pred_iou_thresh is None  # the model family's (resolved by MaskGenerator)
    assert settings.stability_score_thresh == GeneratorOptions.default("stability_score_thresh")
    assert settings.model_source == "mobile_sam"


def test_the_new_variable_and_the_old_one(monkeypatch, caplog):
    monkeypatch.setenv("SAMKIT_LS_STABILITY_SCORE_THRESH", "0.6")
    assert Settings.from_env().stability_score_thresh == 0.6
    monkeypatch.setenv("SAMKIT_LS_STABILITY_THRESH", "0.4")
    assert Settings.from_env().stability_score_thresh == 0.6  # the new spelling wins
    monkeypatch.delenv("SAMKIT_LS_STABILITY_SCORE_THRESH")
    with caplog.at_level(logging.WARNING, logger="samkit"):
        with pytest.warns(SamkitDeprecationWarning, match="use SAMKIT_LS_STABILITY_SCORE_THRESH"):
            settings = Settings.from_env()
    assert settings.stability_score_thresh == 0.4 and settings.batch_signature()[2] == 0.4
    assert "SAMKIT_LS_STABILITY_THRESH is deprecated: use SAMKIT_LS_STABILITY_SCORE_THRESH" in caplog.text


def test_the_old_setting_name():
    with pytest.warns(SamkitDeprecationWarning, match="use stability_score_thresh"):
        settings = Settings.from_env(stability_thresh=0.3)
    assert settings.stability_score_thresh == 0.3
    with pytest.warns(SamkitDeprecationWarning, match="use Settings.stability_score_thresh"):
        assert settings.stability_thresh == 0.3


def test_model_variables_mean_what_they_mean_everywhere(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMKIT_MODEL", "vit_b")
    assert Settings.from_env().model_source == "vit_b"
    checkpoint = tmp_path / "mine.pth"
    checkpoint.write_bytes(b"")
    monkeypatch.setenv("SAMKIT_CHECKPOINT", str(checkpoint))
    assert Settings.from_env().model_source == str(checkpoint)  # a checkpoint file wins over the name
    assert Settings.from_env(checkpoint="other.pth").model_source == "other.pth"  # --checkpoint
    monkeypatch.setenv("SAMKIT_CHECKPOINT", "vit_l")  # a model name where a file is meant: still works
    with pytest.warns(SamkitDeprecationWarning, match="SAMKIT_MODEL=vit_l"):
        assert Settings.from_env().model_source == "vit_l"
