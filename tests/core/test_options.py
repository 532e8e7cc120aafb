"""Settings under one spelling (samkit.options): GeneratorOptions' flags, and old spellings that
keep working with a deprecation message."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

import pytest

import samkit
from samkit.options import GeneratorOptions, SamkitDeprecationWarning, add_generator_arguments, generator_arguments

NAMES = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "crop_n_layers")


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_generator_arguments(parser, NAMES, **kwargs)
    return parser


def test_flags_are_the_dashed_official_names_with_generator_options_defaults():
    parser = _parser()
    args = parser.parse_args([])
    assert generator_arguments(args, NAMES) == {}  # nothing given: every default stays GeneratorOptions'
    args = parser.parse_args(["--points-per-side", "8", "--stability-score-thresh", "0.5", "--pred-iou-thresh", "0"])
    assert generator_arguments(args, NAMES) == {"points_per_side": 8, "stability_score_thresh": 0.5,
                                                "pred_iou_thresh": 0.0}
    assert isinstance(args.points_per_side, int) and isinstance(args.stability_score_thresh, float)
    text = " ".join(parser.format_help().split())
    assert f"(default: {GeneratorOptions.default('stability_score_thresh'):g})" in text
    assert f"(default: {GeneratorOptions.default('points_per_side')})" in text
    assert "(default: the model's: 0.88 for" in text  # pred_iou_thresh: None in GeneratorOptions, the family's
    with pytest.raises(argparse.ArgumentError, match="must be at least 1, got 0"):
        parser.parse_args(["--points-per-side", "0"])
    with pytest.raises(argparse.ArgumentError, match="expected a number"):
        parser.parse_args(["--pred-iou-thresh", "high"])


def test_an_old_flag_still_sets_the_setting_with_a_deprecation(caplog):
    parser = _parser(old_flags={"--stability-thresh": "stability_score_thresh"})
    assert "--stability-thresh" not in parser.format_help()
    with caplog.at_level(logging.WARNING, logger="samkit"):
        with pytest.warns(SamkitDeprecationWarning, match="--stability-thresh is deprecated: use "
                                                          "--stability-score-thresh"):
            args = parser.parse_args(["--stability-thresh", "0.25"])
    assert generator_arguments(args, NAMES) == {"stability_score_thresh": 0.25}
    assert "--stability-thresh is deprecated: use --stability-score-thresh" in caplog.text


def test_generator_options_live_where_the_command_lines_need_no_torch():
    code = ("import sys, samkit.options, samkit.models; samkit.options.GeneratorOptions().replace(crop_n_layers=1); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
    # the same record wherever it is imported from
    from samkit import mask_generator

    assert samkit.GeneratorOptions is GeneratorOptions is mask_generator.GeneratorOptions
