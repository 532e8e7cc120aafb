"""SAM 2.1 export: the graphs in onnxruntime against samkit's model and Predictor on the same weights.

The model is SAM 2.1 tiny from samkit's ``build_sam2("tiny")`` with seeded, perturbed weights
(onnx_exports.sam2_tiny_model), exported once per test process. References:

* the graphs' interface is samexporter's (vietanhdev/samexporter, samexporter/export_sam2.py:
  input and output names, output order, the num_labels / num_points axes) and the one the FiftyOne
  App's SAM 2 web worker feeds (fiftyone 1.19, fiftyone/server/static/assets/worker-*.js: seven
  decoder inputs, no orig_im_size, point_coords (1, N, 2) without a padding point, has_mask_input
  (1,), reads ``masks`` and ``iou_predictions``);
* the decoder graph against the model's own plain decoder (``Sam2.decode_prompts``), the encoder
  graph against ``Sam2.embed``;
* samkit.OnnxPredictor against samkit.Predictor on images of several sizes, points, boxes and mask
  input: logits within 1e-3, mask IoU >= 0.999.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import samkit

try:
    from . import onnx_exports, oracle
except ImportError:
    import onnx_exports
    import oracle

from onnx_exports import (
    LOGIT_TOL, MIN_IOU, TORCHLESS_POINT, assert_batch_matches, assert_same, predict_without_torch, prompt_cases,
)
DECODER_INPUTS = ["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                  "mask_input", "has_mask_input"]


@pytest.fixture(scope="module")
def model():
    return onnx_exports.sam2_tiny_model()


@pytest.fixture(scope="module")
def export_dir():
    return onnx_exports.sam2_tiny_export()


@pytest.fixture(scope="module")
def sessions(export_dir):
    return onnx_exports.session(export_dir / "encoder.onnx"), onnx_exports.session(export_dir / "decoder.onnx")


@pytest.fixture(scope="module")
def onnx_predictor(export_dir):
    return samkit.OnnxPredictor(export_dir)


def images(images_dir):
    """Smaller and larger than the 1024 square, portrait and landscape."""
    return onnx_exports.prediction_images(images_dir, truck=True)


@pytest.fixture(scope="module")
def embedded(model, sessions, images_dir):
    """The truck image: the model's embedding and the encoder graph's outputs on the same input."""
    image = samkit.load_image(images_dir / "truck.jpg")
    with torch.no_grad():
        pixels = model.preprocess(torch.from_numpy(image.copy()).permute(2, 0, 1)).pixels
        reference = model.embed(pixels)
    outputs = sessions[0].run(None, {"image": pixels.numpy()})
    return reference, outputs


def test_interface_is_samexporters_and_the_apps(sessions):
    encoder, decoder = sessions
    assert [(i.name, i.shape) for i in encoder.get_inputs()] == [("image", [1, 3, 1024, 1024])]
    assert [(o.name, o.shape) for o in encoder.get_outputs()] == [
        ("high_res_feats_0", [1, 32, 256, 256]), ("high_res_feats_1", [1, 64, 128, 128]),
        ("image_embed", [1, 256, 64, 64])]
    inputs = {i.name: i.shape for i in decoder.get_inputs()}
    assert list(inputs) == DECODER_INPUTS
    assert inputs["image_embed"] == [1, 256, 64, 64]
    assert inputs["high_res_feats_0"] == [1, 32, 256, 256] and inputs["high_res_feats_1"] == [1, 64, 128, 128]
    assert inputs["point_coords"] == ["num_labels", "num_points", 2]
    assert inputs["point_labels"] == ["num_labels", "num_points"]
    assert inputs["mask_input"] == ["num_labels", 1, 256, 256]
    assert len(inputs["has_mask_input"]) == 1 and isinstance(inputs["has_mask_input"][0], str)
    outputs = {o.name: o.shape for o in decoder.get_outputs()}
    assert list(outputs)[:2] == ["masks", "iou_predictions"]  # samexporter's order, read by position
    assert outputs["masks"] == ["num_labels", 3, 256, 256] and outputs["iou_predictions"] == ["num_labels", 3]
    assert outputs["all_masks"] == ["num_labels", 4, 256, 256] and outputs["all_iou_predictions"] == ["num_labels", 4]


def test_encoder_matches_model(embedded, sessions, model):
    reference, outputs = embedded
    expected = [*reference.high_res_features, reference.features]
    for name, ours, ref in zip(("high_res_feats_0", "high_res_feats_1", "image_embed"), outputs, expected):
        assert ours.shape == tuple(ref.shape), name
        assert np.abs(ours - ref.numpy()).max() < LOGIT_TOL * max(1.0, float(ref.abs().max())), name
    # a second, different input: the graph is not constant in its input
    other = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        second = model.embed(other)
    embed = sessions[0].run(["image_embed"], {"image": other.numpy()})[0]
    assert np.abs(embed - second.features.numpy()).max() < LOGIT_TOL * max(1.0, float(second.features.abs().max()))
    assert np.abs(embed - outputs[2]).max() > 0.1


def decoder_cases():
    """(name, point_coords (L, N, 2) in the 1024 frame, point_labels (L, N), mask_input flag)."""
    return [
        ("one click, as the App sends it", [[[512.0, 380.0]]], [[1]], False),
        ("two points", [[[300.5, 200.25], [700.0, 640.0]]], [[1, 0]], False),
        ("box", [[[100.0, 150.0], [600.0, 700.0]]], [[2, 3]], False),
        ("box and four points", [[[100.0, 150.0], [600.0, 700.0], [350, 420], [120, 160], [590, 690], [400, 90]]],
         [[2, 3, 1, 0, 1, 0]], False),
        ("seven points with mask input", [[[80.0 * i + 40, 1000 - 90.0 * i] for i in range(7)]],
         [[1, 0, 1, 1, 0, 1, 0]], True),
        ("two prompts at once", [[[200.0, 300.0], [0.0, 0.0]], [[800.0, 500.0], [820.0, 530.0]]],
         [[1, -1], [1, 1]], True),
    ]


def _feeds(outputs, coords, labels, mask_input):
    high_res_0, high_res_1, embed = outputs
    count = coords.shape[0]
    return {
        "image_embed": embed, "high_res_feats_0": high_res_0, "high_res_feats_1": high_res_1,
        "point_coords": coords, "point_labels": labels.astype(np.float32),
        "mask_input": mask_input if mask_input is not None else np.zeros((count, 1, 256, 256), np.float32),
        "has_mask_input": np.ones(count, np.float32) if mask_input is not None else np.zeros(1, np.float32),
    }


def test_decoder_matches_model(embedded, sessions, model):
    """Any point count, boxes as corner points, mask input, several prompts at once: the graph's
    four outputs against the plain decoder on the same features (the model appends SAM 2's
    padding point itself, as the graph does)."""
    reference, outputs = embedded
    low_res_of_a_click = None
    for name, coords, labels, with_mask in decoder_cases():
        coords = np.asarray(coords, np.float32)
        labels = np.asarray(labels, np.int64)
        mask_input = None
        if with_mask:
            mask_input = np.repeat(low_res_of_a_click, coords.shape[0], axis=0)
        masks, iou, all_masks, all_iou = sessions[1].run(None, _feeds(outputs, coords, labels, mask_input))
        with torch.no_grad():
            expected = model.decode_prompts(
                reference, torch.from_numpy(coords), torch.from_numpy(labels), None,
                None if mask_input is None else torch.from_numpy(mask_input), multimask_output=True)
            all_expected, all_iou_expected, _ = model.mask_decoder.predict_masks(
                reference.features, model.prompt_encoder.get_dense_pe(),
                *model.prompt_encoder(points=(torch.from_numpy(coords), torch.from_numpy(labels)), boxes=None,
                                      masks=None if mask_input is None else torch.from_numpy(mask_input)),
                reference.high_res_features)
        assert masks.shape == (coords.shape[0], 3, 256, 256), name
        assert np.abs(masks - expected.masks.clamp(-32, 32).numpy()).max() < LOGIT_TOL, name
        assert np.abs(iou - expected.iou_predictions.numpy()).max() < LOGIT_TOL, name
        assert np.abs(all_masks - all_expected.numpy()).max() < LOGIT_TOL, name
        assert np.abs(all_iou - all_iou_expected.numpy()).max() < LOGIT_TOL, name
        assert np.abs(all_masks[:, 1:]).max() > 1.0, name  # logits of a trained-like spread
        for a, b in zip((masks > 0).reshape(-1, 256, 256), (expected.masks > 0).numpy().reshape(-1, 256, 256)):
            assert oracle.mask_iou(a, b) >= MIN_IOU, name
        if low_res_of_a_click is None:
            low_res_of_a_click = all_masks[:, 1:2]


@pytest.mark.parametrize("stable_single", [False, True], ids=["best-multimask", "stable-single"])
def test_single_mask_decoder(embedded, model, onnx_predictor, images_dir, stable_single):
    """single_mask: one mask per prompt, chosen as SAM 2's predictor chooses it for
    multimask_output=False: the single-mask output when its stability score passes 0.98 (the
    stable_single model), else the multimask output of highest predicted IoU (the seeded model's
    single-mask output never passes). OnnxPredictor makes the same choice from all_masks."""
    reference, outputs = embedded
    chosen_model = onnx_exports.sam2_tiny_model(stable_single)
    export = onnx_exports.sam2_tiny_export(single_mask=True, stable_single=stable_single)
    meta = json.loads((export / "model.json").read_text())
    assert meta["parts"]["decoder"]["single_mask"] and meta["parts"]["decoder"]["num_masks"] == 1
    assert "encoder" not in meta["parts"]
    decoder = onnx_exports.session(export / "decoder.onnx")
    picked = set()
    for name, coords, labels, _ in decoder_cases():
        coords = np.asarray(coords, np.float32)
        labels = np.asarray(labels, np.int64)
        masks, iou, all_masks, _ = decoder.run(None, _feeds(outputs, coords, labels, None))
        with torch.no_grad():
            expected = chosen_model.decode_prompts(reference, torch.from_numpy(coords), torch.from_numpy(labels),
                                                   multimask_output=False)
        assert masks.shape == (coords.shape[0], 1, 256, 256), name
        assert np.abs(masks - expected.masks.clamp(-32, 32).numpy()).max() < LOGIT_TOL, name
        assert np.abs(iou - expected.iou_predictions.numpy()).max() < LOGIT_TOL, name
        for mask, candidates in zip(masks, all_masks):
            picked.add(int(np.argmin(np.abs(np.clip(candidates, -32, 32) - mask).reshape(4, -1).max(axis=1))))
    assert (picked == {0}) if stable_single else (0 not in picked), picked

    # OnnxPredictor (decoder only, the image state given) against samkit.Predictor
    onnx_predictor.set_image(images_dir / "dog.jpg")
    single = samkit.OnnxPredictor(export)
    single.set_image_state(onnx_predictor.current_state)
    predictor = samkit.Predictor(chosen_model)
    predictor.set_image(images_dir / "dog.jpg")
    for case in prompt_cases(534, 800):
        assert_same(single.predict(**case, multimask_output=False), predictor.predict(**case, multimask_output=False),
                    f"single {sorted(case)}")


def test_model_json(export_dir, model):
    meta = json.loads((export_dir / "model.json").read_text())
    assert meta["family"] == "sam2" and meta["model"] == "sam2.1_hiera_tiny"
    assert meta["input_size"] == 1024 and meta["low_res_size"] == [256, 256]
    assert meta["preprocessing"]["pixel_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["preprocessing"]["pixel_std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["parts"]["encoder"]["file"] == "encoder.onnx"
    assert meta["parts"]["decoder"]["file"] == "decoder.onnx"
    assert meta["parts"]["decoder"]["quantized_file"] == "decoder.quant.onnx"
    assert list(meta["parts"]["encoder"]["outputs"]) == ["high_res_feats_0", "high_res_feats_1", "image_embed"]
    assert meta["source"]["checkpoint"] is None and len(meta["source"]["state_dict_sha256"]) == 64
    assert sorted(p.name for p in export_dir.iterdir()) == [
        "decoder.onnx", "decoder.quant.onnx", "encoder.onnx", "model.json"]


def test_preprocessing_is_samkits(onnx_predictor, model, images_dir):
    """OnnxPredictor's numpy preprocessing (Pillow's float bilinear) is Sam2.preprocess (torch's
    antialiased bilinear) to float32 rounding, for images smaller and larger than 1024."""
    for name, image in images(images_dir).items():
        tensor, input_size = onnx_predictor.preprocess(image)
        expected = model.preprocess(torch.from_numpy(image.copy()).permute(2, 0, 1)).pixels.numpy()
        assert input_size == (1024, 1024) and tensor.shape == expected.shape, name
        assert np.abs(tensor - expected).max() < 1e-5, name


OPTIONS = ({}, {"multimask_output": False}, {"return_logits": True}, {"best_only": True},
           {"return_logits": True, "multimask_output": False})


def test_onnx_predictor_matches_predictor(onnx_predictor, model, images_dir):
    """Through the exported encoder and decoder, on four image sizes."""
    predictor = samkit.Predictor(model)
    for name, image in images(images_dir).items():
        predictor.set_image(image)
        onnx_predictor.set_image(image)
        assert onnx_predictor.original_size == predictor.original_size == image.shape[:2]
        state = predictor.current_state
        embedding = onnx_predictor.get_image_embedding()
        assert np.abs(embedding - state.features.numpy()).max() < LOGIT_TOL, name
        for ours, ref in zip(onnx_predictor.current_state.high_res_features, state.high_res_features):
            assert np.abs(ours - ref.numpy()).max() < LOGIT_TOL, name
        for index, case in enumerate(prompt_cases(*image.shape[:2])):
            for options in (OPTIONS[index % len(OPTIONS)], OPTIONS[(index + 2) % len(OPTIONS)]):
                what = f"{name}: {sorted(case)} {options}"
                assert_same(onnx_predictor.predict(**case, **options), predictor.predict(**case, **options), what)
            _, scores, low_res = predictor.predict(**case)
            refine = dict(case, mask_input=low_res[np.argmax(scores)][None], multimask_output=index % 2 == 0)
            assert_same(onnx_predictor.predict(**refine), predictor.predict(**refine), f"{name}: refine {sorted(case)}")


def test_predict_batch_matches(onnx_predictor, model, images_dir):
    predictor = samkit.Predictor(model)
    predictor.set_image(images_dir / "dog.jpg")
    onnx_predictor.set_image(images_dir / "dog.jpg")
    assert_batch_matches(onnx_predictor, predictor)


def test_quantized_decoder(export_dir, onnx_predictor, images_dir):
    quantized = samkit.OnnxPredictor(export_dir, quantized=True)
    assert (export_dir / "decoder.quant.onnx").stat().st_size < 0.5 * (export_dir / "decoder.onnx").stat().st_size
    onnx_predictor.set_image(images_dir / "dog.jpg")
    quantized.set_image_state(onnx_predictor.current_state)
    for case in prompt_cases(534, 800):
        masks, _, _ = quantized.predict(**case)
        expected, _, _ = onnx_predictor.predict(**case)
        assert min(oracle.mask_iou(a, b) for a, b in zip(masks, expected)) >= 0.95, sorted(case)


def test_runs_without_torch(export_dir, model, images_dir, tmp_path):
    ours = predict_without_torch(export_dir, images_dir / "dog.jpg", tmp_path)
    predictor = samkit.Predictor(model)
    predictor.set_image(images_dir / "dog.jpg")
    expected = predictor.predict(point_coords=np.array(TORCHLESS_POINT), point_labels=np.array([1]))
    assert_same(ours, expected, "without torch")


def test_fiftyone_app_option_refuses_what_the_app_cannot_run(mobile_sam, model, tmp_path):
    """fiftyone_app needs a SAM 2 model, both parts and the default decoder; refused before anything
    is exported or written."""
    from samkit.errors import SamkitError

    cases = [
        (mobile_sam, {}, "runs SAM 2"),
        (model, {"parts": ("decoder",)}, "both the encoder and the decoder"),
        (model, {"single_mask": True}, "default decoder"),
        (model, {"dynamic_points": False}, "default decoder"),
    ]
    for index, (which, kwargs, message) in enumerate(cases):
        out = tmp_path / f"app{index}"
        with pytest.raises(SamkitError, match=message):
            samkit.export(which, out, fiftyone_app=True, **kwargs)
        assert not out.exists() and not list(tmp_path.glob(f".app{index}*"))


def test_cli_has_the_fiftyone_app_flag():
    import argparse

    from samkit.export.cli import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["export", "sam2.1_hiera_tiny", "-o", "out", "--fiftyone-app"])
    assert args.fiftyone_app is True and args.model == "sam2.1_hiera_tiny"
