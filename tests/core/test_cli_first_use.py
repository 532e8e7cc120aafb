"""The smaller things a new user of the `samkit` command meets: negative coordinates, prompts
checked before the model loads, PNG masks only when asked, a described `everything --help`,
`info` without the weights."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import samkit
from samkit import build, mask_utils
from samkit.cli import build_parser, main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("samkit: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_negative_coordinates_need_no_equals_sign(mobile_sam, mobile_sam_checkpoint, images_dir, tmp_path, capsys):
    image = images_dir / "dog.jpg"
    # a box dragged past the image's left edge is clipped to it, as in the Python API
    assert main(["predict", str(image), "--box", "-10,40,300,400", "--model", str(mobile_sam_checkpoint),
                 "--device", "cpu", "-o", str(tmp_path / "box")]) == 0
    predictor = samkit.Predictor(mobile_sam)
    predictor.set_image(image)
    expected, _, _ = predictor.predict(box=np.array([0, 40, 300, 400]), multimask_output=False)
    doc = json.loads((tmp_path / "box" / "masks.json").read_text())
    assert np.array_equal(mask_utils.rle_to_mask(doc["annotations"][0]["segmentation"]), expected[0])
    # a point left of the image is our one-line error, not argparse's "expected one argument"
    assert main(["predict", str(image), "--points", "-10,20", "--model", str(mobile_sam_checkpoint),
                 "-o", str(tmp_path / "pt")]) == 2
    assert "point (-10, 20) lies outside" in one_line_error(capsys)


def test_prompts_are_checked_before_the_model_loads(images_dir, tmp_path, capsys):
    # the model does not exist: an error about the prompt proves it was checked first
    assert main(["predict", str(images_dir / "dog.jpg"), "--points", "5000,5000", "--model",
                 str(tmp_path / "missing.pt"), "-o", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert "lies outside" in err and "checkpoint" not in err


def test_the_sam_facade_checks_prompts_before_encoding(mobile_sam):
    sam = samkit.SAM.__new__(samkit.SAM)  # on the session's model, not loaded again
    sam.model, sam.predictor, sam.generator_options = mobile_sam, samkit.Predictor(mobile_sam), {}
    with pytest.raises(samkit.PromptError, match="outside"):
        sam(np.zeros((60, 80, 3), np.uint8), points=[500, 500])
    assert sam.predictor.encoder_calls == 0


def test_predict_writes_png_masks_only_when_asked(mobile_sam_checkpoint, images_dir, tmp_path):
    base = ["predict", str(images_dir / "dog.jpg"), "--points", "300,250", "--model", str(mobile_sam_checkpoint),
            "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "plain")]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["masks.json", "overlay.png"]
    assert main([*base, "--png-masks", "-o", str(tmp_path / "png")]) == 0
    assert [p.name for p in (tmp_path / "png" / "masks").iterdir()] == ["mask_0000.png"]


def test_everything_help_describes_every_option_with_its_default():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    everything = sub.choices["everything"]
    for action in everything._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{action.option_strings[0]} has no description"
        if action.default not in (None, False):
            assert "%(default)s" in action.help, f"{action.option_strings[0]} does not show its default"
    text = everything.format_help()
    assert re.search(r"--pred-iou-thresh X\s+keep masks whose predicted IoU", text)
    flat = " ".join(text.split())
    assert "(default: the model's: 0.88 for SAM 1 and MobileSAM, 0.8 for SAM 2 / 2.1)" in flat
    assert "(default: 32)" in text


def test_info_offline_prints_the_architecture_without_weights(tmp_path, monkeypatch, mobile_sam_checkpoint,
                                                              capsys):
    monkeypatch.setenv("SAMKIT_HOME", str(tmp_path))

    def offline(url, destination):
        raise AssertionError(f"info tried to download {url}")

    monkeypatch.setattr(build, "_download", offline)
    assert main(["info", "mobile_sam"]) == 0
    out = capsys.readouterr().out
    params = samkit.load_model(mobile_sam_checkpoint, device="cpu").num_parameters()
    assert out.startswith("mobile_sam (MobileSAM, TinyViT-5M")
    assert f": {params:,} parameters, {params * 4 / 1e6:.1f} MB as float32; checkpoint mobile_sam.pt is not in " \
           f"{tmp_path} (samkit download mobile_sam fetches it from https://" in out
    assert list(tmp_path.iterdir()) == []
