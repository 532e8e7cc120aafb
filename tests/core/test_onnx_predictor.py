"""samkit.OnnxPredictor: samkit.Predictor's API and outputs on an ONNX export, without PyTorch.

The export is MobileSAM's (encoder, decoder, int8 decoder) from the seeded checkpoint; the
reference is samkit.Predictor on the same checkpoint: masks IoU >= 0.999, logits (full-size and
low-res) within 1e-3, on images of several sizes, going through the exported encoder too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import samkit
from samkit.errors import PromptError, SamkitError

try:
    from . import onnx_exports, oracle
except ImportError:
    import onnx_exports
    import oracle

LOGIT_TOL = 1e-3
MIN_IOU = 0.999


@pytest.fixture(scope="module")
def export_dir(mobile_sam_checkpoint):
    return onnx_exports.mobile_export(mobile_sam_checkpoint)


@pytest.fixture(scope="module")
def onnx_predictor(export_dir):
    return samkit.OnnxPredictor(export_dir)


def images(images_dir):
    """dog.jpg as it is (800x534), a portrait cut of truck.jpg and a small image."""
    truck = samkit.load_image(images_dir / "truck.jpg")
    return {
        "dog": samkit.load_image(images_dir / "dog.jpg"),
        "portrait": np.ascontiguousarray(truck[100:1000, 300:800]),
        "small": np.ascontiguousarray(truck[::40, ::40]),
    }


def prompt_cases(height, width):
    return [
        {"point_coords": np.array([[0.4 * width, 0.5 * height]]), "point_labels": np.array([1])},
        {"point_coords": np.array([[0.4 * width, 0.5 * height], [0.8 * width, 0.2 * height],
                                   [0.1 * width, 0.9 * height]]), "point_labels": np.array([1, 0, 1])},
        {"box": np.array([0.1 * width, 0.2 * height, 0.6 * width, 0.9 * height])},
        {"point_coords": np.array([[0.3 * width, 0.6 * height]]), "point_labels": np.array([0]),
         "box": np.array([0.1 * width, 0.2 * height, 0.6 * width, 0.9 * height])},
        {},
    ]


OPTIONS = ({}, {"multimask_output": False}, {"return_logits": True}, {"best_only": True},
           {"return_low_res": False, "best_only": True})


def assert_same(ours, theirs, what):
    (masks, scores, low_res), (ref_masks, ref_scores, ref_low_res) = ours, theirs
    assert masks.shape == ref_masks.shape and masks.dtype == ref_masks.dtype, what
    assert np.abs(scores - ref_scores).max() < LOGIT_TOL, what
    if ref_low_res is None:
        assert low_res is None, what
    else:
        assert np.abs(low_res - ref_low_res).max() < LOGIT_TOL, what
    if masks.dtype == bool:
        for a, b in zip(masks, ref_masks):
            assert oracle.mask_iou(a, b) >= MIN_IOU, what
    else:
        assert np.abs(masks - ref_masks).max() < LOGIT_TOL, what


def test_matches_predictor(onnx_predictor, mobile_sam, images_dir):
    predictor = samkit.Predictor(mobile_sam)
    for name, image in images(images_dir).items():
        predictor.set_image(image)
        onnx_predictor.set_image(image)
        assert onnx_predictor.original_size == predictor.original_size
        assert onnx_predictor.input_size == predictor.input_size
        embedding = onnx_predictor.get_image_embedding()
        assert np.abs(embedding - predictor.get_image_embedding().numpy()).max() < LOGIT_TOL, name
        for index, case in enumerate(prompt_cases(*image.shape[:2])):
            # each prompt with two of the options (every option meets every image and kind of prompt)
            for options in (OPTIONS[index % len(OPTIONS)], OPTIONS[(index + 2) % len(OPTIONS)]):
                what = f"{name}: {sorted(case)} {options}"
                ours = onnx_predictor.predict(**case, **options)
                theirs = predictor.predict(**case, **options)
                assert_same(ours, theirs, what)
            if index % 2 == 0:  # a refining click: the previous best low-res mask as the mask input
                _, scores, low_res = predictor.predict(**case)
                refine = dict(case, mask_input=low_res[np.argmax(scores)][None])
                assert_same(onnx_predictor.predict(**refine), predictor.predict(**refine),
                            f"{name}: refine {sorted(case)}")


def test_preprocessing_is_samkits(onnx_predictor, mobile_sam, images_dir):
    """The encoder's input, made in numpy, is samkit's (resize, normalisation, padding) to the bit.
    Checked directly: the seeded TinyViT's embedding hardly reacts to its input's scale (a swap of
    the colour channels moves it by ~4e-5), so the embedding comparison alone would not catch it."""
    import torch

    for name, image in images(images_dir).items():
        tensor, input_size = onnx_predictor.preprocess(image)
        resized = samkit.transforms.resize_longest_side(image, 1024)
        expected = mobile_sam.preprocess(torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None])
        assert input_size == resized.shape[:2], name
        assert tensor.dtype == np.float32 and np.array_equal(tensor, expected.numpy()), name


def test_predict_batch_matches(onnx_predictor, dog_predictor, images_dir):
    onnx_predictor.set_image(images_dir / "dog.jpg")
    boxes = np.array([[50, 40, 300, 400], [400, 100, 780, 500], [10, 10, 60, 60]])
    points = np.array([[[150, 200]], [[500, 300]], [[30, 30]]])
    labels = np.ones((3, 1), dtype=np.int64)
    for kwargs in ({"boxes": boxes}, {"point_coords": points, "point_labels": labels},
                   {"point_coords": points, "point_labels": labels, "boxes": boxes, "multimask_output": True}):
        ours = onnx_predictor.predict_batch(**kwargs)
        theirs = dog_predictor.predict_batch(**kwargs)
        assert ours[0].shape == theirs[0].shape
        for b in range(len(ours[0])):
            assert_same([x[b] for x in ours], [x[b] for x in theirs], f"{sorted(kwargs)} prompt {b}")


def test_embedding_cache(onnx_predictor, images_dir):
    onnx_predictor.set_image(images_dir / "dog.jpg")
    calls = onnx_predictor.encoder_calls
    onnx_predictor.set_image(samkit.load_image(images_dir / "dog.jpg").copy())
    assert onnx_predictor.encoder_calls == calls


def test_quantized_decoder(export_dir, dog_predictor):
    predictor = samkit.OnnxPredictor(export_dir, quantized=True)
    predictor.set_image_state(samkit.export.onnx_predictor.OnnxImageState(
        dog_predictor.get_image_embedding().numpy(), dog_predictor.original_size, dog_predictor.input_size))
    masks, _, _ = predictor.predict(point_coords=np.array([[300, 250]]), point_labels=np.array([1]))
    expected, _, _ = dog_predictor.predict(point_coords=np.array([[300, 250]]), point_labels=np.array([1]))
    assert min(oracle.mask_iou(a, b) for a, b in zip(masks, expected)) >= 0.95


def test_bad_input(export_dir, onnx_predictor, tmp_path, images_dir):
    with pytest.raises(SamkitError, match="no model.json"):
        samkit.OnnxPredictor(tmp_path)
    with pytest.raises(SamkitError, match="is not a folder"):
        samkit.OnnxPredictor(tmp_path / "missing")
    single = tmp_path / "single"
    shutil.copytree(export_dir, single)
    meta = json.loads((single / "model.json").read_text())
    meta["parts"]["decoder"]["single_mask"] = True
    (single / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SamkitError, match="single_mask"):
        samkit.OnnxPredictor(single)
    onnx_predictor.reset_image()
    with pytest.raises(SamkitError, match="no image set"):
        onnx_predictor.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    onnx_predictor.set_image(images_dir / "dog.jpg")
    with pytest.raises(PromptError, match="outside the 800x534 image"):
        onnx_predictor.predict(point_coords=np.array([[900, 10]]), point_labels=np.array([1]))
    with pytest.raises(PromptError, match="x1 < x0"):
        onnx_predictor.predict(box=np.array([300, 10, 100, 50]))


BLOCKED_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this process")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker did not block torch")

    import numpy as np
    import samkit

    predictor = samkit.OnnxPredictor(sys.argv[1])
    predictor.set_image(sys.argv[2])
    masks, scores, low_res = predictor.predict(point_coords=np.array([[300, 250]]), point_labels=np.array([1]))
    np.savez(sys.argv[3], masks=masks, scores=scores, low_res=low_res)
    assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
    print("ok")
""")


def test_runs_without_torch(export_dir, dog_predictor, images_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_TORCH, str(export_dir), str(images_dir / "dog.jpg"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    out = np.load(tmp_path / "out.npz")
    expected = dog_predictor.predict(point_coords=np.array([[300, 250]]), point_labels=np.array([1]))
    assert_same((out["masks"], out["scores"], out["low_res"]), expected, "without torch")
