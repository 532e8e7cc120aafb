"""Exports the ONNX tests share (made once per test process, like oracle.official_vit_b), and how
the OnnxPredictor tests compare it with samkit.Predictor.

* ``mobile_export(checkpoint)``: MobileSAM's encoder and decoder, plus the int8 decoder, exported
  from the seeded MobileSAM checkpoint file (as `samkit export mobile_sam_random.pt` would).
* ``vit_b_export(single_mask)``: the decoder of oracle.official_vit_b's perturbed ViT-B, exported
  from its checkpoint file. Its encoder is not exported here: tracing a ViT-B costs more than the
  rest of these tests together; the encoder graph is checked on MobileSAM and a small ViT.
* ``official_decoder_export(single_mask)``: the official package's own SamOnnxModel on the same
  ViT-B weights, exported as its scripts/export_onnx_model.py does (TorchScript exporter, opset 17,
  the point count dynamic, the example image 1500 x 2250).
* ``sam2_tiny_model()`` / ``sam2_tiny_export(single_mask)``: SAM 2.1 tiny built with samkit's
  ``build_sam2("tiny")``, its weights seeded and perturbed (oracle.perturb_) with the hypernetwork
  outputs scaled as sam2_oracle does (logits of a trained-like spread, so that few pixels sit at
  the 0 threshold); its encoder, decoder and int8 decoder exported from the model object (or the
  decoder alone with single_mask).
* ``feeds(...)``: the official decoder's inputs built as the official notebook builds them
  (segment_anything's ResizeLongestSide, a (0, 0) point labelled -1 when there is no box).
* ``prediction_images`` / ``prompt_cases`` / ``assert_same`` / ``assert_batch_matches`` /
  ``predict_without_torch``: OnnxPredictor against samkit.Predictor (logits within LOGIT_TOL,
  masks of IoU >= MIN_IOU), the same for every exported family.
"""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import torch

import samkit

try:
    from . import oracle
except ImportError:
    import oracle


LOGIT_TOL = 1e-3
MIN_IOU = 0.999


@functools.lru_cache(maxsize=None)
def mobile_export(checkpoint: Path) -> Path:
    out = oracle._tmpdir() / "mobile_sam_onnx"
    samkit.export(str(checkpoint), out, quantize=True)
    return out


def vit_b_export(single_mask: bool = False) -> Path:
    return _vit_b_export(bool(single_mask))


@functools.lru_cache(maxsize=None)
def _vit_b_export(single_mask: bool) -> Path:
    _, checkpoint = oracle.official_vit_b()
    out = oracle._tmpdir() / f"vit_b_onnx_{'single' if single_mask else 'all'}"
    samkit.export(str(checkpoint), out, parts=("decoder",), single_mask=single_mask)
    return out


@functools.lru_cache(maxsize=None)
def vit_b_model() -> samkit.Sam:
    _, checkpoint = oracle.official_vit_b()
    return samkit.load_model(checkpoint, device="cpu")


SAM2_SEED = 20241201
SAM2_LOGIT_GAIN = 20.0  # as sam2_oracle.LOGIT_GAIN


SAM2_STABLE_GAIN = 50.0


@functools.lru_cache(maxsize=None)
def sam2_tiny_model(stable_single: bool = False):
    """stable_single: a copy whose single-mask output is scaled up (SAM2_STABLE_GAIN), so that its
    stability score passes SAM 2's threshold and single-mask prediction keeps it; with the plain
    seeded weights it never does, and the best multimask output is chosen instead."""
    from samkit.modeling.sam2.model import build_sam2

    if stable_single:
        model = copy.deepcopy(sam2_tiny_model())
        with torch.no_grad():
            layer = model.mask_decoder.output_hypernetworks_mlps[0].layers[-1]
            layer.weight.mul_(SAM2_STABLE_GAIN)
            layer.bias.mul_(SAM2_STABLE_GAIN)
        return model.eval()
    torch.manual_seed(SAM2_SEED)
    model = build_sam2("tiny")
    oracle.perturb_(model, SAM2_SEED + 1)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(SAM2_LOGIT_GAIN)
            mlp.layers[-1].bias.mul_(SAM2_LOGIT_GAIN)
    return model.eval()


def sam2_tiny_export(single_mask: bool = False, stable_single: bool = False) -> Path:
    """The full export (encoder, decoder, int8 decoder), or with single_mask the decoder alone
    (of the stable_single model if asked)."""
    return _sam2_tiny_export(bool(single_mask), bool(stable_single))


@functools.lru_cache(maxsize=None)
def _sam2_tiny_export(single_mask: bool, stable_single: bool) -> Path:
    kind = ("stable_single" if stable_single else "single") if single_mask else "all"
    out = oracle._tmpdir() / f"sam2.1_tiny_onnx_{kind}"
    if single_mask:
        samkit.export(sam2_tiny_model(stable_single), out, parts=("decoder",), single_mask=True)
    else:
        samkit.export(sam2_tiny_model(), out, quantize=True)
    return out


@functools.lru_cache(maxsize=None)
def official_decoder_export(single_mask: bool) -> Path:
    oracle.official()
    from segment_anything.utils.onnx import SamOnnxModel

    model, _ = oracle.official_vit_b()
    onnx_model = SamOnnxModel(model, return_single_mask=single_mask)
    dummy = {
        "image_embeddings": torch.randn(1, 256, 64, 64),
        "point_coords": torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 256, 256, dtype=torch.float),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    path = oracle._tmpdir() / f"official_decoder_{'single' if single_mask else 'all'}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            onnx_model, tuple(dummy.values()), str(path), dynamo=False, export_params=True, opset_version=17,
            do_constant_folding=True, input_names=list(dummy),
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )
    return path


def feeds(embedding, image_size, points=None, labels=None, box=None, mask_input=None) -> dict[str, np.ndarray]:
    """The official decoder's inputs for prompts in original-image pixels, built as the official
    onnx_model_example notebook does."""
    oracle.official()
    from segment_anything.utils.transforms import ResizeLongestSide

    transform = ResizeLongestSide(1024)
    coords = np.zeros((0, 2))
    point_labels = np.zeros((0,))
    if points is not None:
        coords = np.concatenate([coords, np.asarray(points, dtype=np.float64)])
        point_labels = np.concatenate([point_labels, np.asarray(labels, dtype=np.float64)])
    if box is not None:
        coords = np.concatenate([coords, np.asarray(box, dtype=np.float64).reshape(2, 2)])
        point_labels = np.concatenate([point_labels, [2, 3]])
    elif points is not None:
        coords = np.concatenate([coords, [[0.0, 0.0]]])
        point_labels = np.concatenate([point_labels, [-1]])
    coords = transform.apply_coords(coords[None], image_size).astype(np.float32)
    return {
        "image_embeddings": np.asarray(embedding, dtype=np.float32),
        "point_coords": coords,
        "point_labels": point_labels[None].astype(np.float32),
        "mask_input": (np.zeros((1, 1, 256, 256), dtype=np.float32) if mask_input is None
                       else np.asarray(mask_input, dtype=np.float32).reshape(1, 1, 256, 256)),
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], dtype=np.float32),
        "orig_im_size": np.array(image_size, dtype=np.float32),
    }


def session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# -- OnnxPredictor against samkit.Predictor ----------------------------------------------------
def prediction_images(images_dir: Path, truck: bool = False) -> dict[str, np.ndarray]:
    """dog.jpg as it is (800x534), truck.jpg whole (1800x1200) if asked, a portrait cut of it and a
    small image: smaller and larger than the 1024 input, portrait and landscape."""
    whole = samkit.load_image(images_dir / "truck.jpg")
    return {
        "dog": samkit.load_image(images_dir / "dog.jpg"),
        **({"truck": whole} if truck else {}),
        "portrait": np.ascontiguousarray(whole[100:1000, 300:800]),
        "small": np.ascontiguousarray(whole[::40, ::40]),
    }


def prompt_cases(height: int, width: int) -> list[dict[str, np.ndarray]]:
    """predict's keyword arguments on an image of (height, width): points, boxes and both."""
    box = np.array([0.1 * width, 0.2 * height, 0.6 * width, 0.9 * height])
    return [
        {"point_coords": np.array([[0.4 * width, 0.5 * height]]), "point_labels": np.array([1])},
        {"point_coords": np.array([[0.4 * width, 0.5 * height], [0.8 * width, 0.2 * height],
                                   [0.1 * width, 0.9 * height]]), "point_labels": np.array([1, 0, 1])},
        {"box": box},
        {"point_coords": np.array([[0.3 * width, 0.6 * height]]), "point_labels": np.array([0]), "box": box},
        {"point_coords": np.array([[0.3 * width, 0.6 * height], [0.5 * width, 0.5 * height]]),
         "point_labels": np.array([0, 1]), "box": box},
    ]


def assert_same(ours, theirs, what) -> None:
    """Two (masks, scores, low_res) of predict: the same shapes and dtypes, scores and logits within
    LOGIT_TOL, boolean masks of IoU >= MIN_IOU; low_res None in both or within LOGIT_TOL."""
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


def assert_batch_matches(onnx_predictor, predictor) -> None:
    """predict_batch of both on their current image (dog.jpg): boxes, points, and both with all
    three masks, prompt by prompt as assert_same."""
    boxes = np.array([[50, 40, 300, 400], [400, 100, 780, 500], [10, 10, 60, 60]])
    points = np.array([[[150, 200]], [[500, 300]], [[30, 30]]])
    labels = np.ones((3, 1), dtype=np.int64)
    for kwargs in ({"boxes": boxes}, {"point_coords": points, "point_labels": labels},
                   {"point_coords": points, "point_labels": labels, "boxes": boxes, "multimask_output": True}):
        ours = onnx_predictor.predict_batch(**kwargs)
        theirs = predictor.predict_batch(**kwargs)
        assert ours[0].shape == theirs[0].shape
        for b in range(len(ours[0])):
            assert_same([x[b] for x in ours], [x[b] for x in theirs], f"{sorted(kwargs)} prompt {b}")


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
    masks, scores, low_res = predictor.predict(point_coords=np.array(POINT), point_labels=np.array([1]))
    np.savez(sys.argv[3], masks=masks, scores=scores, low_res=low_res)
    assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
    print("ok")
""")
TORCHLESS_POINT = [[300, 250]]  # the click predict_without_torch makes


def predict_without_torch(export_dir: Path, image: Path, scratch: Path) -> tuple[np.ndarray, ...]:
    """OnnxPredictor(export_dir).predict of a click at TORCHLESS_POINT on `image`, in a fresh
    Python process where importing torch fails (and that checks no torch module got loaded):
    (masks, scores, low_res)."""
    script = BLOCKED_TORCH.replace("POINT", repr(TORCHLESS_POINT))
    out = scratch / "without_torch.npz"
    result = subprocess.run(
        [sys.executable, "-c", script, str(export_dir), str(image), str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    saved = np.load(out)
    return saved["masks"], saved["scores"], saved["low_res"]
