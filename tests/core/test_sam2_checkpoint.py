"""Loading official SAM 2 / 2.1 state_dicts into the native image model.

- A 2.1 checkpoint (the official ``{"model": ...}`` file) loads: every image key strictly, the
  video model's keys (memory attention and encoder, object pointers, ...) recognised and dropped.
- A SAM 2.0 model (``configs/sam2/``, fewer video keys) loads the same way.
- Wrong files get one CheckpointError that names the problem: an unknown key, a missing image
  key, another size's weights (wrong shapes).
"""

from __future__ import annotations

import pytest
import torch

from samkit.errors import CheckpointError
from samkit.modeling.sam2.model import VIDEO_KEY_PREFIXES, build_sam2, image_weights

try:
    from . import sam2_oracle
except ImportError:
    import sam2_oracle


def _ours(size: str = "tiny", version: str = "2.1"):
    return build_sam2(size, version=version)


def test_official_checkpoint_loads_and_drops_video_weights():
    official, path = sam2_oracle.official_model("tiny")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)["model"]
    video = [k for k in state_dict if k.startswith(VIDEO_KEY_PREFIXES)]
    assert len(video) > 50  # the file really carries the video model
    model = _ours()
    model.load_official_state_dict(state_dict, path)
    assert model.arch == "sam2.1_hiera_tiny"
    ours = model.state_dict()
    assert len(ours) == len(state_dict) - len(video)
    for our_key, key in [
        ("no_mem_embed", "no_mem_embed"),
        ("prompt_encoder.point_embeddings.2.weight", "sam_prompt_encoder.point_embeddings.2.weight"),
        ("mask_decoder.conv_s0.weight", "sam_mask_decoder.conv_s0.weight"),
        ("image_encoder.trunk.pos_embed", "image_encoder.trunk.pos_embed"),
    ]:
        assert torch.equal(ours[our_key], state_dict[key]), our_key


def test_sam2_0_model_loads():
    official = sam2_oracle.build_official("tiny", version="2.0")
    state_dict = official.state_dict()
    assert "no_obj_embed_spatial" not in state_dict  # a 2.1-only video weight
    model = _ours(version="2.0")
    model.load_official_state_dict(state_dict)
    assert model.arch == "sam2_hiera_tiny"
    ours = model.state_dict()
    assert torch.equal(ours["mask_decoder.iou_token.weight"], state_dict["sam_mask_decoder.iou_token.weight"])


@pytest.fixture(scope="module")
def tiny_state_dict():
    return sam2_oracle.build_official("tiny").state_dict()


def test_unknown_key_is_named(tiny_state_dict):
    state_dict = dict(tiny_state_dict, **{"text_encoder.proj.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"not a SAM 2 checkpoint: 1 unknown keys: text_encoder\.proj\.weight"):
        image_weights(state_dict, "x.pt")
    with pytest.raises(CheckpointError, match="text_encoder"):
        _ours().load_official_state_dict(state_dict, "x.pt")


def test_missing_image_key_is_named(tiny_state_dict):
    state_dict = {k: v for k, v in tiny_state_dict.items() if k != "sam_mask_decoder.conv_s1.weight"}
    with pytest.raises(CheckpointError, match=r"1 missing keys: mask_decoder\.conv_s1\.weight"):
        _ours().load_official_state_dict(state_dict, "x.pt")


def test_other_size_is_refused(tiny_state_dict):
    with pytest.raises(CheckpointError, match=r"does not fit the sam2\.1_hiera_base_plus architecture.*wrong shapes"):
        _ours("base_plus").load_official_state_dict(tiny_state_dict, "x.pt")


def test_video_only_checkpoint_is_refused(tiny_state_dict):
    video_only = {k: v for k, v in tiny_state_dict.items() if k.startswith(VIDEO_KEY_PREFIXES)}
    with pytest.raises(CheckpointError, match="holds no SAM 2 image model"):
        _ours().load_official_state_dict(video_only, "video.pt")
