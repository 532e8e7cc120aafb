"""What SAM 2 / 2.1 checkpoints hold, read without building a model: which keys are the image
model's (and their names here), which are the video model's, and which size and version a
state_dict is.

Official files are ``{"model": state_dict}`` (``build.read_state_dict`` unwraps them) with keys
``image_encoder.*``, ``sam_prompt_encoder.*``, ``sam_mask_decoder.*``, ``no_mem_embed`` and the video
model's memory weights. A state_dict saved from samkit's own ``Sam2`` (``prompt_encoder.*``,
``mask_decoder.*``) is read as well. Light imports only: the model registry reads this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ...errors import CheckpointError
from ..backbones.hiera import HIERA_CONFIGS

# checkpoint prefix -> ours (the attribute names of SAM 1's Sam); ours map to themselves, so a
# state_dict saved from samkit's Sam2 loads too
IMAGE_KEY_PREFIXES = {
    "image_encoder.": "image_encoder.",
    "sam_prompt_encoder.": "prompt_encoder.",
    "sam_mask_decoder.": "mask_decoder.",
    "prompt_encoder.": "prompt_encoder.",
    "mask_decoder.": "mask_decoder.",
    "no_mem_embed": "no_mem_embed",
}
# ours -> the official checkpoint's prefix (what a checkpoint samkit writes uses)
OFFICIAL_KEY_PREFIXES = {
    "image_encoder.": "image_encoder.",
    "prompt_encoder.": "sam_prompt_encoder.",
    "mask_decoder.": "sam_mask_decoder.",
    "no_mem_embed": "no_mem_embed",
}
# the video model's weights: present in every official checkpoint, unused for images
VIDEO_KEY_PREFIXES = (
    "memory_attention.",
    "memory_encoder.",
    "mask_downsample.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
)
# video weights only SAM 2.1 has (2.1's object-pointer temporal encoding and spatial no-object
# embedding); the image networks of 2.0 and 2.1 are the same
SAM2_1_ONLY_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")

_PATCH_EMBED = "image_encoder.trunk.patch_embed.proj.weight"
_BLOCK = "image_encoder.trunk.blocks."
# Hiera size by (patch embedding width, number of blocks), from the trunk configurations
SIZE_BY_TRUNK = {(config.embed_dim, sum(config.stages)): size for size, config in HIERA_CONFIGS.items()}


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def is_sam2(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state_dict is SAM 2's: a Hiera trunk, SAM 2's decoder, or SAM 2's video weights."""
    markers = (_BLOCK, "sam_mask_decoder.", "sam_prompt_encoder.", "mask_decoder.conv_s0.", *VIDEO_KEY_PREFIXES)
    return any(key.startswith(markers) for key in state_dict)


def recognise_sam2(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The registry name of the SAM 2 model a state_dict holds ("sam2.1_hiera_tiny", "sam2_hiera_large",
    ...), None when it is not SAM 2's. Raises CheckpointError for a SAM 2 state_dict without an image
    model (the video weights only) or with a trunk of no official size."""
    if not is_sam2(state_dict):
        return None
    patch = state_dict.get(_PATCH_EMBED)
    if patch is None:
        image = [k for k in state_dict if k.startswith(tuple(IMAGE_KEY_PREFIXES))]
        if not image:
            raise CheckpointError(
                "it holds SAM 2 video memory weights but no image model (no image_encoder, sam_prompt_encoder or "
                "sam_mask_decoder weights): samkit needs a complete SAM 2 / 2.1 checkpoint"
            )
        raise CheckpointError(f"it is a SAM 2 checkpoint without its Hiera trunk ({_PATCH_EMBED} is missing)")
    blocks = {int(key[len(_BLOCK):].split(".", 1)[0]) for key in state_dict if key.startswith(_BLOCK)}
    width, depth = int(patch.shape[0]), len(blocks)
    size = SIZE_BY_TRUNK.get((width, depth))
    if size is None:
        known = ", ".join(f"{s} ({w} wide, {d} blocks)" for (w, d), s in SIZE_BY_TRUNK.items())
        raise CheckpointError(
            f"its Hiera trunk ({width} wide, {depth} blocks) is none of SAM 2's sizes: {known}"
        )
    has_video = any(key.startswith(VIDEO_KEY_PREFIXES) for key in state_dict)
    version_2_0 = has_video and not any(key in state_dict for key in SAM2_1_ONLY_KEYS)
    return f"sam2_hiera_{size}" if version_2_0 else f"sam2.1_hiera_{size}"


def image_weights(state_dict: Mapping[str, torch.Tensor], path: Path | str = "state_dict") -> dict[str, torch.Tensor]:
    """The image model's weights of an official SAM 2 / 2.1 state_dict, under our names; the video
    weights are dropped. Keys that are neither raise a CheckpointError naming them."""
    ours, unknown = {}, []
    for key, value in state_dict.items():
        for prefix, new in IMAGE_KEY_PREFIXES.items():
            if key.startswith(prefix):
                ours[new + key[len(prefix):]] = value
                break
        else:
            if not key.startswith(VIDEO_KEY_PREFIXES):
                unknown.append(key)
    if unknown:
        raise CheckpointError(f"{path} is not a SAM 2 checkpoint: {len(unknown)} unknown keys: {_shown(unknown)}")
    if not ours:
        raise CheckpointError(
            f"{path} holds no SAM 2 image model: no image_encoder, sam_prompt_encoder or sam_mask_decoder "
            "weights (only video memory weights)"
        )
    return ours
