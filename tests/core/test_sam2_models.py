"""SAM 2 / 2.1 in the model registry and through load_model / get_model / samkit.SAM / the command:
every name (ours, the official file names, Ultralytics'), each size and version recognised from a
state_dict, and one clear error for a truncated file, a video-only or unknown checkpoint and a name
whose file cannot be downloaded. Architectures are built on the meta device (no memory, no time)
where no weights are needed; files are the seeded random Hiera-T of tests/sam2_files.py."""

from __future__ import annotations

import shutil
import urllib.error

import numpy as np
import pytest
import torch

import samkit
from samkit import build, registry
from samkit.cli import main
from samkit.models import MODEL_CACHE
from samkit.modeling.sam2.model import Sam2, build_sam2

from sam2_files import official_state_dict, video_weights, write_sam2_checkpoint

SIZES = {"tiny": "t", "small": "s", "base_plus": "b", "large": "l"}
VERSIONS = {"2.1": ("sam2.1", "092824"), "2.0": ("sam2", "072824")}


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("size", list(SIZES))
def test_every_name_and_checkpoint_is_registered(size, version):
    prefix, folder = VERSIONS[version]
    name = f"{prefix}_hiera_{size}"
    spec = registry.lookup(name)
    assert spec is not None and spec.name == name and spec.family is registry.SAM2
    for alias in (f"{name}.pt", f"{prefix}_{SIZES[size]}.pt", f"{prefix}_{SIZES[size]}", name.upper()):
        assert registry.lookup(alias) is spec, alias
    checkpoint = build.CHECKPOINTS[name]
    assert checkpoint.filename == f"{name}.pt"
    assert checkpoint.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/{folder}/{name}.pt"
    # no hash is published by Meta and none could be checked here: none is pinned
    assert (checkpoint.md5, checkpoint.md5_prefix, checkpoint.git_blob_sha1) == (None, None, None)
    with torch.device("meta"):
        model = spec.build()
    assert isinstance(model, Sam2) and model.arch == name
    assert model.num_parameters() == spec.parameters


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("size", list(SIZES))
def test_each_size_and_version_is_recognised(size, version):
    """An official state_dict of each model (shapes only, on the meta device) is recognised as that
    model, and its weights, renamed by the family's hook, fit that model exactly."""
    with torch.device("meta"):
        model = build_sam2(size, version)
        state_dict = official_state_dict(model, version)
    spec = registry.recognise(state_dict)
    assert spec is not None and spec.name == model.arch
    weights = build.model_weights(state_dict, spec, "x.pt")
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_image_weights_alone_are_sam2_1():
    """A state_dict without the video model (the image keys only, official or ours) loads as 2.1:
    the image networks of 2.0 and 2.1 are the same."""
    with torch.device("meta"):
        model = build_sam2("small")
    assert registry.recognise(model.state_dict()).name == "sam2.1_hiera_small"
    image_only = {k: v for k, v in official_state_dict(model).items() if k not in video_weights()}
    assert registry.recognise(image_only).name == "sam2.1_hiera_small"


def test_a_trunk_of_no_official_size_is_named():
    with torch.device("meta"):
        state_dict = official_state_dict(build_sam2("tiny"))
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("image_encoder.trunk.blocks.11.")}
    with pytest.raises(samkit.CheckpointError, match=r"Hiera trunk \(96 wide, 11 blocks\) is none of SAM 2's sizes: "
                                                     r"tiny \(96 wide, 12 blocks\), small"):
        build.infer_spec(state_dict, "odd.pt")


# -- files -----------------------------------------------------------------------------------------


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty model cache; nothing may be downloaded."""
    home = tmp_path / "cache"
    home.mkdir()
    monkeypatch.setenv("SAMKIT_HOME", str(home))

    def unreachable(url, destination):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(build, "_download", unreachable)
    return home


def test_official_file_loads_with_its_video_weights_ignored(sam2_tiny_checkpoint, cache):
    model = samkit.load_model(sam2_tiny_checkpoint, device="cpu")
    assert isinstance(model, Sam2) and model.arch == "sam2.1_hiera_tiny" and not model.training
    saved = torch.load(sam2_tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    ours = model.state_dict()
    assert len(ours) == len(saved) - len(video_weights("2.1"))
    assert torch.equal(ours["mask_decoder.conv_s1.weight"], saved["sam_mask_decoder.conv_s1.weight"])
    key = "prompt_encoder.point_embeddings.0.weight"
    assert torch.equal(ours[key], saved["sam_" + key])
    assert torch.equal(ours["no_mem_embed"], saved["no_mem_embed"])


def test_a_sam2_0_file_is_recognised(tmp_path, cache):
    path = write_sam2_checkpoint(tmp_path / "mine.pt", version="2.0", seed=1)
    assert samkit.load_model(path, device="cpu").arch == "sam2_hiera_tiny"


def test_a_file_named_like_ultralytics_loads_from_the_working_directory(sam2_tiny_checkpoint, cache, tmp_path,
                                                                        monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "sam2.1_t.pt").symlink_to(sam2_tiny_checkpoint)
    monkeypatch.chdir(work)
    model = samkit.SAM("sam2.1_t.pt", device="cpu").model
    assert model.arch == "sam2.1_hiera_tiny" and model.checkpoint_path == "sam2.1_t.pt"


def test_names_load_the_file_in_the_cache(sam2_tiny_checkpoint, cache):
    """Every name of the model finds the official file in the cache (copied there by hand: with
    no hash pinned it is taken as it is) and gives the same cached model."""
    shutil.copy(sam2_tiny_checkpoint, cache / "sam2.1_hiera_tiny.pt")
    MODEL_CACHE.clear()
    loads = MODEL_CACHE.loads  # a running count over the process (other tests load models too)
    try:
        first = samkit.get_model("sam2.1_t.pt", device="cpu")
        assert first.arch == "sam2.1_hiera_tiny" and first.checkpoint_path == str(cache / "sam2.1_hiera_tiny.pt")
        for name in ("sam2.1_hiera_tiny", "sam2.1_hiera_tiny.pt", "sam2.1_t"):
            assert samkit.get_model(name, device="cpu") is first
        assert MODEL_CACHE.loads == loads + 1
    finally:
        MODEL_CACHE.clear()


def test_a_name_offline_gives_one_error_naming_the_file_and_url(cache, monkeypatch):
    url = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    with pytest.raises(samkit.CheckpointError) as info:
        samkit.load_model("sam2.1_t.pt", device="cpu")
    message = str(info.value)
    assert message.startswith(f"could not download sam2.1_hiera_tiny.pt from {url} (")
    assert str(cache / "sam2.1_hiera_tiny.pt") in message and "\n" not in message
    assert list(cache.iterdir()) == []  # no partial file left
    # the early check a form makes says the same, without loading anything
    monkeypatch.setattr(build, "host_reachable", lambda url, timeout: False)
    problem = build.checkpoint_problem("sam2.1_t.pt")
    assert problem == (f"sam2.1_hiera_tiny.pt is not in {cache} and dl.fbaipublicfiles.com cannot be reached to "
                       f"download it: download {url} elsewhere and put it at {cache / 'sam2.1_hiera_tiny.pt'}, or "
                       "give the file's path as the model")


def test_a_truncated_file_says_so(sam2_tiny_checkpoint, tmp_path):
    data = sam2_tiny_checkpoint.read_bytes()
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(samkit.CheckpointError, match=r"it is truncated \([\d,]+ bytes of a PyTorch zip archive"):
        samkit.load_model(path, device="cpu")


def test_a_video_only_checkpoint_is_refused(tmp_path):
    path = tmp_path / "video.pt"
    torch.save({"model": video_weights("2.1")}, path)
    with pytest.raises(samkit.CheckpointError) as info:
        samkit.load_model(path, device="cpu")
    assert str(info.value) == (
        f"{path}: it holds SAM 2 video memory weights but no image model (no image_encoder, sam_prompt_encoder "
        "or sam_mask_decoder weights): samkit needs a complete SAM 2 / 2.1 checkpoint"
    )


def test_an_unknown_checkpoint_names_every_family(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"backbone.stem.weight": torch.zeros(2)}}, path)
    with pytest.raises(samkit.CheckpointError) as info:
        samkit.load_model(path, device="cpu")
    message = str(info.value)
    assert message.startswith(f"{path} is not a SAM or MobileSAM checkpoint, nor a SAM 2 / 2.1 checkpoint")
    assert "sam2.1_hiera_tiny.pt" in message and "backbone.stem.weight" in message


def test_an_unknown_key_in_a_sam2_file_is_named(tmp_path):
    with torch.device("meta"):
        state_dict = official_state_dict(build_sam2("tiny"))
    state_dict["text_encoder.proj.weight"] = torch.zeros(1, device="meta")
    with pytest.raises(samkit.CheckpointError, match=r"not a SAM 2 checkpoint: 1 unknown keys: text_encoder\.proj"):
        build.model_weights(state_dict, registry.recognise(state_dict), "x.pt")


# -- the command ------------------------------------------------------------------------------------


def test_info_without_the_file_prints_the_architecture(cache, capsys):
    assert main(["info", "sam2.1_hiera_tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sam2.1_hiera_tiny (SAM 2.1 Hiera-T, Hiera, width 96, stages 1/2/7/2")
    assert "31,440,721 parameters" in out
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt" in out
    assert list(cache.iterdir()) == []


def test_predict_and_everything_take_a_sam2_name(sam2_tiny_checkpoint, cache, images_dir, tmp_path, capsys):
    shutil.copy(sam2_tiny_checkpoint, cache / "sam2.1_hiera_tiny.pt")
    image = images_dir / "dog.jpg"
    assert main(["info", "sam2.1_hiera_tiny", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("sam2.1_hiera_tiny: 31,440,721 parameters")
    assert main(["predict", str(image), "--points", "300,250", "--model", "sam2.1_hiera_tiny", "--device", "cpu",
                 "-o", str(tmp_path / "one")]) == 0
    from test_core_cli import read_masks

    _, masks = read_masks(tmp_path / "one")
    predictor = samkit.Predictor(samkit.load_model(cache / "sam2.1_hiera_tiny.pt", device="cpu"))
    predictor.set_image(image)
    expected, _, _ = predictor.predict(point_coords=np.array([[300, 250]]), point_labels=np.array([1]),
                                       multimask_output=False)
    assert len(masks) == 1 and np.array_equal(masks[0], expected[0])
    assert main(["everything", str(image), "--points-per-side", "2", "--pred-iou-thresh", "0",
                 "--stability-score-thresh", "0", "--use-m2m", "--model", "sam2.1_hiera_tiny", "--device", "cpu",
                 "-o", str(tmp_path / "all")]) == 0
    doc, masks = read_masks(tmp_path / "all")
    assert len(masks) >= 1 and masks[0].shape == expected[0].shape


def test_another_models_file_under_an_official_name_is_refused(sam2_tiny_checkpoint, cache):
    """SAM 2 files have no pinned hash: what the file holds is checked against the name asked for."""
    shutil.copy(sam2_tiny_checkpoint, cache / "sam2.1_hiera_small.pt")
    with pytest.raises(samkit.CheckpointError) as info:
        samkit.load_model("sam2.1_s.pt", device="cpu")
    assert str(info.value) == (
        f"{cache / 'sam2.1_hiera_small.pt'} holds sam2.1_hiera_tiny, not sam2.1_hiera_small: delete it and run "
        "`samkit download sam2.1_hiera_small` (or put the right file there)"
    )
