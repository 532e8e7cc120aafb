"""Bad input gets one clear samkit error that says what was wrong, never a torch traceback."""

from __future__ import annotations

import fractions

import numpy as np
import pytest
import torch

import samkit


# -- images -------------------------------------------------------------------------------------
def test_missing_image_file(tmp_path):
    with pytest.raises(samkit.ImageError, match="not found"):
        samkit.load_image(tmp_path / "nope.jpg")


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is text, not a JPEG")
    with pytest.raises(samkit.ImageError, match="not an image"):
        samkit.load_image(path)


def test_truncated_image_file(tmp_path, images_dir):
    path = tmp_path / "cut.jpg"
    path.write_bytes((images_dir / "dog.jpg").read_bytes()[:3000])
    with pytest.raises(samkit.ImageError, match="corrupt or truncated"):
        samkit.load_image(path)


def test_empty_image_array():
    with pytest.raises(samkit.ImageError, match="empty"):
        samkit.load_image(np.zeros((0, 10, 3), dtype=np.uint8))


def test_wrong_shape_array():
    with pytest.raises(samkit.ImageError, match="shape"):
        samkit.load_image(np.zeros((4, 5, 6, 3), dtype=np.uint8))


def test_float_array_out_of_range():
    with pytest.raises(samkit.ImageError, match="stretch"):
        samkit.load_image(np.full((4, 4, 3), 1000.0, dtype=np.float32))


# -- checkpoints --------------------------------------------------------------------------------
def test_wrong_checkpoint_names_keys(tmp_path, mobile_sam_checkpoint):
    state = torch.load(mobile_sam_checkpoint, weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    state["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 128)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(samkit.CheckpointError) as info:
        samkit.load_model(path, device="cpu")
    message = str(info.value)
    assert "mask_decoder.iou_token.weight" in message
    assert "mask_decoder.extra.weight" in message
    assert "prompt_encoder.no_mask_embed.weight (1, 128) (expected (1, 256))" in message


def test_truncated_checkpoint(tmp_path, mobile_sam_checkpoint):
    path = tmp_path / "mobile_sam.pt"
    path.write_bytes(mobile_sam_checkpoint.read_bytes()[:200_000])
    with pytest.raises(samkit.CheckpointError, match="it is truncated"):
        samkit.load_model(path, device="cpu")


def test_not_a_sam_checkpoint(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, path)
    with pytest.raises(samkit.CheckpointError, match="not a SAM or MobileSAM checkpoint"):
        samkit.load_model(path, device="cpu")


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"image_encoder.x": torch.zeros(1), "obj": samkit.errors.SamkitError("x")}, path)
    with pytest.raises(samkit.CheckpointError, match="refuses to unpickle"):
        samkit.load_model(path, device="cpu")


def test_unknown_model_name():
    with pytest.raises(samkit.CheckpointError, match="not a known model name"):
        samkit.load_model("sam_vit_q", device="cpu")


def test_offline_download_names_url_and_local_option(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_HOME", str(tmp_path))
    from samkit import build

    def unreachable(url, destination):
        raise OSError("Name or service not known")

    monkeypatch.setattr(build, "_download", unreachable)
    with pytest.raises(samkit.CheckpointError) as info:
        samkit.load_model("sam_b.pt", device="cpu")
    message = str(info.value)
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in message
    assert "load_model('/path/to/sam_vit_b_01ec64.pth')" in message
    assert not list(tmp_path.iterdir()), "a failed download must leave no partial file"


def test_corrupt_download_is_rejected_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_HOME", str(tmp_path))
    from samkit import build

    def wrong_file(url, destination):
        destination.write_bytes(b"not the checkpoint")

    monkeypatch.setattr(build, "_download", wrong_file)
    with pytest.raises(samkit.CheckpointError, match="git blob SHA-1"):
        samkit.load_model("mobile_sam", device="cpu")
    assert not list(tmp_path.iterdir())


def test_verified_download_is_cached_and_loaded(tmp_path, monkeypatch, mobile_sam_checkpoint):
    """A download whose hash matches lands in the cache under the official name and loads."""
    monkeypatch.setenv("SAMKIT_HOME", str(tmp_path))
    from samkit import build

    data = mobile_sam_checkpoint.read_bytes()
    import hashlib

    blob_sha1 = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    spec = build.Checkpoint(
        "mobile_sam", "mobile_sam.pt", "https://example.invalid/mobile_sam.pt", git_blob_sha1=blob_sha1
    )
    monkeypatch.setitem(build.CHECKPOINTS, "mobile_sam", spec)
    calls = []

    def fake_download(url, destination):
        calls.append(url)
        destination.write_bytes(data)

    monkeypatch.setattr(build, "_download", fake_download)
    model = samkit.load_model("mobile_sam.pt", device="cpu")
    assert model.arch == "mobile_sam"
    assert (tmp_path / "mobile_sam.pt").is_file()
    samkit.load_model("mobile_sam", device="cpu")
    assert calls == ["https://example.invalid/mobile_sam.pt"], "the second load must come from the cache"


# -- prompts ------------------------------------------------------------------------------------
def test_predict_before_set_image(mobile_sam):
    with pytest.raises(samkit.SamkitError, match="set_image"):
        samkit.Predictor(mobile_sam).predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))


def test_mismatched_points_and_labels(dog_predictor):
    with pytest.raises(samkit.PromptError, match="one label per point"):
        dog_predictor.predict(point_coords=np.array([[10, 10], [20, 20]]), point_labels=np.array([1]))


def test_points_without_labels(dog_predictor):
    with pytest.raises(samkit.PromptError, match="give both"):
        dog_predictor.predict(point_coords=np.array([[10, 10]]))


def test_point_outside_image(dog_predictor):
    with pytest.raises(samkit.PromptError, match=r"outside the 800x534 image"):
        dog_predictor.predict(point_coords=np.array([[900, 10]]), point_labels=np.array([1]))


def test_bad_label_value(dog_predictor):
    with pytest.raises(samkit.PromptError, match="1 \\(foreground\\) or 0"):
        dog_predictor.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([2]))


def test_box_with_x1_before_x0(dog_predictor):
    with pytest.raises(samkit.PromptError, match="x1 < x0"):
        dog_predictor.predict(box=np.array([300, 10, 100, 200]))


def test_box_outside_image(dog_predictor):
    with pytest.raises(samkit.PromptError, match="entirely outside"):
        dog_predictor.predict(box=np.array([900, 600, 950, 700]))


def test_box_overhanging_the_image_is_clipped(dog_predictor):
    clipped, _, _ = dog_predictor.predict(box=np.array([700, 400, 800, 534]), multimask_output=False)
    overhang, _, _ = dog_predictor.predict(box=np.array([700, 400, 950, 700]), multimask_output=False)
    assert np.array_equal(clipped, overhang)


def test_wrong_mask_input_shape(dog_predictor):
    with pytest.raises(samkit.PromptError, match="256, 256"):
        dog_predictor.predict(
            point_coords=np.array([[10, 10]]), point_labels=np.array([1]), mask_input=np.zeros((64, 64))
        )


def test_nan_point(dog_predictor):
    with pytest.raises(samkit.PromptError, match="NaN"):
        dog_predictor.predict(point_coords=np.array([[np.nan, 10]]), point_labels=np.array([1]))


@pytest.mark.parametrize("region", [(0, 64), (65, 10), (3,)])
def test_region_outside_the_token_grid(dog_predictor, region):
    coords, labels = torch.tensor([[[300.0, 200.0]]]), torch.ones(1, 1, dtype=torch.int)
    with pytest.raises(samkit.PromptError, match="within the 64x64 grid"):
        dog_predictor.decode_low_res(coords, labels, region=region)


def test_image_over_pillows_pixel_limit(images_dir, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # the 800x534 photo is over twice this
    with pytest.raises(samkit.ImageError, match="MAX_IMAGE_PIXELS"):
        samkit.load_image(images_dir / "dog.jpg")


@pytest.mark.parametrize(
    "content, kind",
    [
        (None, "a JPEG image"),  # an image saved under a checkpoint's name
        (b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}", "a NumPy array file"),
        (b"<!DOCTYPE html><html><body>Access denied</body></html>", "an HTML or XML document"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "a text file (it starts 'version https"),
    ],
)
def test_non_checkpoint_file_says_what_it_is(tmp_path, images_dir, content, kind):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    path.write_bytes((images_dir / "dog.jpg").read_bytes() if content is None else content)
    with pytest.raises(samkit.CheckpointError) as info:
        samkit.load_model(path, device="cpu")
    message = str(info.value)
    assert f"it is {kind}" in message and "not a PyTorch weights file" in message
    assert "Python objects" not in message  # what it used to say of a JPEG or a NumPy file


def test_checkpoint_with_code_names_the_refused_class(tmp_path):
    # A Fraction, not an exception: tblib (imported by dask.distributed in other tests) pickles
    # exceptions through its own function, which would be the class named.
    path = tmp_path / "pickled.pt"
    torch.save({"image_encoder.x": torch.zeros(1), "obj": fractions.Fraction(1, 3)}, path)
    with pytest.raises(samkit.CheckpointError, match=r"Python objects besides tensors \(fractions\.Fraction\)"):
        samkit.load_model(path, device="cpu")


def test_float16_on_a_cpu_warns(mobile_sam_checkpoint):
    with pytest.warns(RuntimeWarning, match="float16 on a CPU is several times slower"):
        model = samkit.load_model(mobile_sam_checkpoint, device="cpu", dtype="float16")
    assert model.compute_dtype == torch.float16
