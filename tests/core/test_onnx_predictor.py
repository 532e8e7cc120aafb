"""samkit.OnnxPredictor: samkit.Predictor's API and outputs on an ONNX export, without PyTorch.

The export is MobileSAM's (encoder, decoder, int8 decoder) from the seeded checkpoint; the
reference is samkit.Predictor on the same checkpoint: masks IoU >= 0.999, logits (full-size and
low-res) within 1e-3, on images of several sizes, going through the exported encoder too.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import samkit
from samkit.errors import PromptError, SamkitError

try:
    from . import onnx_exports, oracle
except ImportError:
    import onnx_exports
    import oracle

from onnx_exports import LOGIT_TOL, TORCHLESS_POINT, assert_batch_matches, assert_same, predict_without_torch


@pytest.fixture(scope="module")
def export_dir(mobile_sam_checkpoint):
    return onnx_exports.mobile_export(mobile_sam_checkpoint)


@pytest.fixture(scope="module")
def onnx_predictor(export_dir):
    return samkit.OnnxPredictor(export_dir)


def images(images_dir):
    """dog.jpg as it is (800x534), a portrait cut of truck.jpg and a small image."""
    return onnx_exports.prediction_images(images_dir)


def prompt_cases(height, width):
    """The shared cases and no prompt at all (the decoder's padding point alone)."""
    return [*onnx_exports.prompt_cases(height, width), {}]


OPTIONS = ({}, {"multimask_output": False}, {"return_logits": True}, {"best_only": True},
           {"return_low_res": False, "best_only": True})


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
    assert_batch_matches(onnx_predictor, dog_predictor)


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


def test_runs_without_torch(export_dir, dog_predictor, images_dir, tmp_path):
    ours = predict_without_torch(export_dir, images_dir / "dog.jpg", tmp_path)
    expected = dog_predictor.predict(point_coords=np.array(TORCHLESS_POINT), point_labels=np.array([1]))
    assert_same(ours, expected, "without torch")
