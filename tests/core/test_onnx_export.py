"""ONNX export (samkit.export, `samkit export`): the graphs run in onnxruntime and give what
samkit's Predictor gives on the same weights, with the official ONNX decoder's interface.

Each comparison feeds the exported decoder the official way (segment_anything's own coordinate
transform and padding point, onnx_exports.feeds) and compares with samkit.Predictor on the same
seeded weights: logits within 1e-3 (full-size and low-res), mask IoU >= 0.999, for points, boxes,
points with a box, mask inputs, no prompt at all, 1 to 8 points, and images of several sizes and
aspect ratios (nothing about the image size is baked into the graph).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import samkit
from samkit.cli import main
from samkit.image_state import ImageState

try:
    from . import onnx_exports, oracle
except ImportError:
    import onnx_exports
    import oracle

LOGIT_TOL = 1e-3
MIN_IOU = 0.999
# (H, W): a photo, a portrait, a long strip, a small image, a square one, a tall strip
SIZES = [(534, 800), (900, 600), (333, 1024), (48, 64), (1024, 1024), (700, 90)]


def prompts(height: int, width: int, seed: int) -> list[dict]:
    """Prompts in original pixels: one click, several points (up to 8), a box, a box with points."""
    rng = np.random.default_rng(seed)

    def points(n):
        xy = rng.uniform([0, 0], [width, height], size=(n, 2))
        return xy, (rng.uniform(size=n) < 0.7).astype(np.int64)

    x0, x1 = sorted(rng.uniform(0, width, size=2))
    y0, y1 = sorted(rng.uniform(0, height, size=2))
    box = np.array([x0, y0, x1, y1])
    cases = [{}]
    for n in (1, 3, 8):
        xy, labels = points(n)
        labels[0] = 1
        cases.append({"points": xy, "labels": labels})
    xy, labels = points(2)
    cases += [{"box": box}, {"points": xy, "labels": labels, "box": box}]
    return cases


def predictor_for(model: samkit.Sam, embedding: torch.Tensor, size: tuple[int, int]) -> samkit.Predictor:
    """A Predictor whose current image is `size` with the given embedding (the decoder and the
    upscaling depend on the image only through these)."""
    predictor = samkit.Predictor(model)
    input_size = samkit.transforms.preprocess_shape(*size, model.image_size)
    predictor.set_image_state(ImageState(embedding, size, input_size))
    return predictor


def assert_matches(graph_out, expected_logits, expected_scores, expected_low_res, what: str):
    masks, scores, low_res = graph_out
    assert masks.shape == expected_logits.shape, what
    assert np.abs(low_res - expected_low_res).max() < LOGIT_TOL, what
    assert np.abs(masks - expected_logits).max() < LOGIT_TOL, what
    assert np.abs(scores - expected_scores).max() < LOGIT_TOL, what
    for ours, theirs in zip(masks > 0, expected_logits > 0):
        assert oracle.mask_iou(ours, theirs) >= MIN_IOU, what


def check_decoder(model, export_dir, embedding, sizes, seed):
    """The exported decoder (all four masks) against Predictor.predict: multimask outputs 1-3 and
    the single-mask output 0, with and without a mask input from the previous call. Each size gets
    every other kind of prompt (alternating between sizes), so every kind meets several sizes."""
    session = onnx_exports.session(export_dir / "decoder.onnx")
    checked = 0
    for index, size in enumerate(sizes):
        predictor = predictor_for(model, embedding, size)
        for case in prompts(*size, seed=seed + size[0])[index % 2 :: 2]:
            kwargs = {"point_coords": case.get("points"), "point_labels": case.get("labels"), "box": case.get("box")}
            mask_input = None
            for step in range(2):  # the second step refines with the first one's best low-res mask
                out = session.run(None, onnx_exports.feeds(embedding.numpy(), size, case.get("points"),
                                                           case.get("labels"), case.get("box"), mask_input))
                assert out[0].shape == (1, 4, *size)
                multi = predictor.predict(**kwargs, mask_input=mask_input, multimask_output=True, return_logits=True)
                single = predictor.predict(**kwargs, mask_input=mask_input, multimask_output=False,
                                           return_logits=True)
                what = f"size {size}, prompt {sorted(case)}, step {step}"
                assert_matches([o[0, 1:] for o in out], *multi, what + ", multimask")
                assert_matches([o[0, :1] for o in out], *single, what + ", single")
                mask_input = multi[2][np.argmax(multi[1])][None]
                checked += 1
    return checked


@pytest.fixture(scope="module")
def mobile_export(mobile_sam_checkpoint):
    return onnx_exports.mobile_export(mobile_sam_checkpoint)


def test_mobile_sam_decoder_matches_predictor(mobile_export, mobile_sam, dog_predictor):
    embedding = dog_predictor.get_image_embedding()
    assert check_decoder(mobile_sam, mobile_export, embedding, SIZES, seed=1) == len(SIZES) * 3 * 2


def test_vit_b_decoder_matches_predictor():
    model = onnx_exports.vit_b_model()
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(5))
    export_dir = onnx_exports.vit_b_export()
    assert check_decoder(model, export_dir, embedding, SIZES[:4], seed=2) == 4 * 3 * 2


def test_mobile_sam_encoder_matches(mobile_export, mobile_sam, images_dir, tmp_path):
    """The exported TinyViT gives samkit's embedding: the seeded checkpoint's (every weight
    perturbed) on dog.jpg, and, because that one's output hardly depends on its input (dog.jpg and
    a black image differ by ~1e-4), a TinyViT with torch's default initialisation, whose output
    does, on two random images."""
    from samkit.export.exporter import ExportOptions, _export_graph
    from samkit.export.sam1 import SAM1

    image = samkit.load_image(images_dir / "dog.jpg")
    resized = samkit.transforms.resize_longest_side(image, 1024)
    tensor = mobile_sam.preprocess(torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None])
    (embedding,) = onnx_exports.session(mobile_export / "encoder.onnx").run(None, {"image": tensor.numpy()})
    assert embedding.shape == (1, 256, 64, 64)
    assert np.abs(embedding - mobile_sam.embed_image(tensor).numpy()).max() < 1e-4

    torch.manual_seed(0)
    model = samkit.build_sam("mobile_sam").eval()
    _export_graph(SAM1.graph(model, "encoder", ExportOptions()), tmp_path / "encoder.onnx", None, torch)
    session = onnx_exports.session(tmp_path / "encoder.onnx")
    images = torch.randn(2, 1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    outputs = [session.run(None, {"image": x.numpy()})[0] for x in images]
    expected = [model.embed_image(x).numpy() for x in images]
    assert np.abs(expected[0] - expected[1]).std() > 0.01  # the output depends on the input
    for ours, theirs in zip(outputs, expected):
        assert np.abs(ours - theirs).max() < 1e-4


def test_vit_encoder_is_traced_whole_and_matches(tmp_path, monkeypatch):
    """samkit's ViT computes global attention in cache-sized slices of query rows on a CPU; the
    export traces it as one product per block (else 64 slices and writes per global block), with
    the same output. A small ViT made to slice (a 1 KB bias budget) stands in for ViT-B/L/H."""
    from samkit.modeling.backbones import vit
    from samkit.export.exporter import ExportOptions, _export_graph
    from samkit.export.sam1 import SAM1

    monkeypatch.setattr(vit, "BIAS_CHUNK_BYTES", 1024)
    torch.manual_seed(3)
    encoder = vit.ImageEncoderViT(img_size=128, embed_dim=64, depth=2, num_heads=2, window_size=4,
                                  global_attn_indexes=(1,))
    oracle.perturb_(encoder, seed=4)
    model = samkit.build_sam("vit_b")
    model.image_encoder = encoder.eval()
    graph = SAM1.graph(model, "encoder", ExportOptions())
    _export_graph(graph, tmp_path / "encoder.onnx", None, torch)
    assert vit.BIAS_CHUNK_BYTES == 1024  # restored
    nodes = [n.op_type for n in onnx.load(str(tmp_path / "encoder.onnx")).graph.node]
    assert nodes.count("Softmax") == 2 and "ScatterND" not in nodes  # one attention per block
    session = onnx_exports.session(tmp_path / "encoder.onnx")
    images = torch.randn(2, 1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = [encoder(x).numpy() for x in images]  # sliced: 8 x 8 tokens, 2 heads -> 1 KB is under one row
    assert np.abs(expected[0] - expected[1]).std() > 0.1  # the output depends on the input
    for x, theirs in zip(images, expected):
        assert np.abs(session.run(None, {"image": x.numpy()})[0] - theirs).max() < 1e-4


def test_decoder_matches_official_samonnxmodel():
    """Same weights, same inputs: our decoder and the official package's own exported one give the
    same masks, IoU predictions and low-res masks, in both official modes. The official graph is
    compared on images shaped as its example (1500 x 2250, 2:3): exported today, it crops every
    image as that one (the TorchScript tracer makes the crop a constant)."""
    model = onnx_exports.vit_b_model()
    embedding = np.random.default_rng(7).standard_normal((1, 256, 64, 64)).astype(np.float32)
    size = (300, 450)
    for single in (False, True):
        ours = onnx_exports.session(onnx_exports.vit_b_export(single) / "decoder.onnx")
        official = onnx_exports.session(onnx_exports.official_decoder_export(single))
        assert [i.name for i in ours.get_inputs()] == [i.name for i in official.get_inputs()]
        assert [o.name for o in ours.get_outputs()] == [o.name for o in official.get_outputs()]
        for case in prompts(*size, seed=11):
            if not case:
                continue  # the official graph needs the padding point (it has no zero-point form)
            for mask_input in (None, np.random.default_rng(1).standard_normal((256, 256))):
                inputs = onnx_exports.feeds(embedding, size, case.get("points"), case.get("labels"), case.get("box"),
                                            mask_input)
                a, b = ours.run(None, inputs), official.run(None, inputs)
                for name, x, y in zip(("masks", "iou_predictions", "low_res_masks"), a, b):
                    assert x.shape == y.shape, name
                    assert np.abs(x - y).max() < LOGIT_TOL, (name, single, sorted(case))
    del model


def test_single_mask_decoder_chooses_as_the_official(mobile_sam):
    """single_mask: one click -> the best of the three multimask outputs; more points -> the
    single-mask output, as Predictor with multimask_output=False."""
    model = onnx_exports.vit_b_model()
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(9))
    session = onnx_exports.session(onnx_exports.vit_b_export(single_mask=True) / "decoder.onnx")
    size = (534, 800)
    predictor = predictor_for(model, embedding, size)
    click = {"points": np.array([[400.0, 300.0]]), "labels": np.array([1])}
    clicks = {"points": np.array([[400.0, 300.0], [100.0, 80.0], [700, 500]]), "labels": np.array([1, 0, 1])}
    for case, multimask in ((click, True), (clicks, False)):
        out = session.run(None, onnx_exports.feeds(embedding.numpy(), size, case["points"], case["labels"]))
        masks, scores, low_res = predictor.predict(case["points"], case["labels"], multimask_output=multimask,
                                                   return_logits=True)
        best = int(np.argmax(scores))
        assert out[0].shape == (1, 1, *size) and out[1].shape == (1, 1)
        assert_matches([o[0] for o in out], masks[best : best + 1], scores[best : best + 1],
                       low_res[best : best + 1], f"multimask {multimask}")


def test_quantized_decoder_is_smaller_and_close(mobile_export, dog_predictor):
    full = onnx_exports.session(mobile_export / "decoder.onnx")
    quantized = onnx_exports.session(mobile_export / "decoder.quant.onnx")
    assert (mobile_export / "decoder.quant.onnx").stat().st_size < 0.5 * (mobile_export / "decoder.onnx").stat().st_size
    nodes = {n.op_type for n in onnx.load(str(mobile_export / "decoder.quant.onnx")).graph.node}
    assert nodes & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    embedding = dog_predictor.get_image_embedding().numpy()
    size = dog_predictor.original_size
    ious = []
    for case in prompts(*size, seed=21)[1:]:
        inputs = onnx_exports.feeds(embedding, size, case.get("points"), case.get("labels"), case.get("box"))
        a, b = full.run(None, inputs)[0][0], quantized.run(None, inputs)[0][0]
        ious += [oracle.mask_iou(x > 0, y > 0) for x, y in zip(a, b)]
    assert min(ious) >= 0.95, ious


def test_model_json(mobile_export, mobile_sam, mobile_sam_checkpoint):
    meta = json.loads((mobile_export / "model.json").read_text())
    assert meta["format"] == "onnx" and meta["family"] == "sam" and meta["model"] == "mobile_sam"
    assert meta["input_size"] == 1024 and meta["samkit_version"] == samkit.__version__
    assert meta["preprocessing"]["pixel_mean"] == pytest.approx(mobile_sam.pixel_mean.flatten().tolist())
    assert meta["preprocessing"]["pixel_std"] == pytest.approx(mobile_sam.pixel_std.flatten().tolist())
    digest = hashlib.sha256(mobile_sam_checkpoint.read_bytes()).hexdigest()
    assert meta["source"]["sha256"] == digest
    assert meta["parts"]["decoder"]["file"] == "decoder.onnx"
    assert meta["parts"]["decoder"]["quantized_file"] == "decoder.quant.onnx"
    assert meta["parts"]["encoder"]["inputs"] == {"image": {"dtype": "float32", "shape": [1, 3, 1024, 1024]}}
    assert list(meta["parts"]["decoder"]["inputs"]) == [
        "image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size",
    ]
    assert meta["parts"]["decoder"]["inputs"]["point_coords"]["shape"] == [1, "num_points", 2]
    assert sorted(p.name for p in mobile_export.iterdir()) == [
        "decoder.onnx", "decoder.quant.onnx", "encoder.onnx", "model.json",
    ]
    for name in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(mobile_export / name))
        onnx.checker.check_model(model)
        assert meta["opset"] == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def test_files_carry_no_trace_of_the_exporting_machine(mobile_export):
    """The exporter records each node's Python stack trace, with this checkout's paths; a file
    users share or serve to a browser must not carry them."""
    source = str(Path(samkit.__file__).resolve().parent)
    for name in ("encoder.onnx", "decoder.onnx", "decoder.quant.onnx"):
        content = (mobile_export / name).read_bytes()
        assert source.encode() not in content and b"stack_trace" not in content, name


def test_export_of_an_in_memory_model(tmp_path, mobile_sam, dog_predictor, monkeypatch):
    """A model that came from no file (fine-tuned in memory), in float64: exported in float32 from
    a copy (the caller's model is left as it is), its source named by its state_dict's hash. Here
    the weights go to an external data file, as for graphs over protobuf's 2 GB (ViT-H's encoder)."""
    from samkit.export import exporter
    from samkit.export.exporter import _source

    monkeypatch.setattr(exporter, "EXTERNAL_DATA_BYTES", 0)
    model = samkit.build_sam("mobile_sam")
    model.load_state_dict(mobile_sam.state_dict())
    model.to(torch.float64)
    result = samkit.export(model, tmp_path / "out", parts=["decoder"])
    assert list(result.files) == ["decoder"] and next(model.parameters()).dtype == torch.float64
    assert result.metadata["parts"]["decoder"]["inputs"]["image_embeddings"]["dtype"] == "float32"
    assert result.metadata["parts"]["decoder"]["external_data"] == "decoder.onnx.data"
    assert (tmp_path / "out" / "decoder.onnx").stat().st_size < 2**20  # the graph alone
    points, labels = np.array([[300.0, 250.0]]), np.array([1])
    size = dog_predictor.original_size
    graph = onnx_exports.session(result.files["decoder"]).run(
        None, onnx_exports.feeds(dog_predictor.get_image_embedding().numpy(), size, points, labels))
    expected = dog_predictor.predict(points, labels, return_logits=True)
    assert_matches([o[0, 1:] for o in graph], *expected, "external data")
    source = result.metadata["source"]
    assert source["checkpoint"] is None and len(source["state_dict_sha256"]) == 64
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(1.0)
    assert _source(model, None)["state_dict_sha256"] != source["state_dict_sha256"]


# -- the command and bad input ---------------------------------------------------------------------------


def test_cli_export(tmp_path, mobile_sam_checkpoint, dog_predictor, capsys):
    """`samkit export`, here with a fixed point count (3: two points and the padding point); then
    the same folder refused, then replaced with --overwrite."""
    out = tmp_path / "exported"
    assert main(["export", str(mobile_sam_checkpoint), "-o", str(out), "--parts", "decoder",
                 "--static-points", "3"]) == 0
    printed = capsys.readouterr().out
    assert "decoder:" in printed and "model.json" in printed
    meta = json.loads((out / "model.json").read_text())
    assert meta["parts"]["decoder"]["num_points"] == 3 and "encoder" not in meta["parts"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no temporary folder left
    session = onnx_exports.session(out / "decoder.onnx")
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes["point_coords"] == [1, 3, 2] and shapes["point_labels"] == [1, 3]
    size = dog_predictor.original_size
    points, labels = np.array([[300.0, 250.0], [500.0, 300.0]]), np.array([1, 0])
    graph = session.run(None, onnx_exports.feeds(dog_predictor.get_image_embedding().numpy(), size, points, labels))
    expected = dog_predictor.predict(points, labels, multimask_output=False, return_logits=True)
    assert_matches([o[0, :1] for o in graph], *expected, "static")

    (out / "marker").write_text("old")
    assert main(["export", str(mobile_sam_checkpoint), "-o", str(out), "--parts", "decoder"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("samkit: error: ") and "already exists" in err and "--overwrite" in err
    assert len(err.splitlines()) == 1 and (out / "marker").read_text() == "old"

    assert main(["export", str(mobile_sam_checkpoint), "-o", str(out), "--parts", "decoder", "--overwrite"]) == 0
    assert not (out / "marker").exists()
    assert json.loads((out / "model.json").read_text())["parts"]["decoder"]["dynamic_points"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "tflite"], "unknown export format 'tflite'; samkit exports: onnx"),
        (["--parts", "encoder,head"], "unknown part(s) 'head'"),
        (["--opset", "17"], "opset 17 is not supported"),
    ],
)
def test_cli_bad_options(tmp_path, mobile_sam_checkpoint, capsys, args, message):
    out = tmp_path / "out"
    assert main(["export", str(mobile_sam_checkpoint), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("samkit: error: ") and message in err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"PK\x03\x04 truncated"])
def test_cli_checkpoint_that_does_not_load(tmp_path, capsys, content):
    bad = tmp_path / "finetuned.pth"
    bad.write_bytes(content)
    out = tmp_path / "out"
    assert main(["export", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"samkit: error: cannot read checkpoint {bad}")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["finetuned.pth"]


def test_failed_export_leaves_nothing(tmp_path, mobile_sam, monkeypatch):
    """A failure after the first file is written leaves neither the folder nor a temporary one."""
    from samkit.export import exporter

    written = []

    def export_graph(graph, path, opset, torch):
        if written:
            raise RuntimeError("disk full")
        path.write_bytes(b"the encoder")
        written.append(path)
        return 18

    monkeypatch.setattr(exporter, "_export_graph", export_graph)
    monkeypatch.setattr(exporter, "_io_description", lambda path: {})
    with pytest.raises(RuntimeError, match="disk full"):
        samkit.export(mobile_sam, tmp_path / "out", parts=("encoder", "decoder"))
    assert len(written) == 1 and not list(tmp_path.iterdir())
