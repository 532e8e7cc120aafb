"""Every model samkit knows, described in one place: one record per model family and one per size.

A family record (`Family`) says how a state_dict of that family is recognised, which checkpoint
keys it may carry that images do not need, and the family's official segment-everything defaults.
A model record (`ModelSpec`) names the builder, the official checkpoint (file name, URL, hash),
every name users know the model by (ours, the official file name, Ultralytics' name) and the
architecture facts `samkit info` prints without weights.

Adding a family means writing its modules under `samkit.modeling` and adding its records here;
`load_model`, the predictor, the mask generator and every adapter then take its names. Nothing
else lists models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .errors import CheckpointError
from .options import FAMILY_GENERATOR_DEFAULTS
from .modeling.backbones.hiera import HIERA_CONFIGS
from .modeling.sam2.checkpoint import VIDEO_KEY_PREFIXES, image_weights, recognise_sam2


@dataclass(frozen=True)
class Checkpoint:
    """An official checkpoint file and how to check it.

    model: the registry name it belongs to. md5 / md5_prefix: the file's MD5, or the start of it
    that Meta puts into its SAM 1 file names; git_blob_sha1: MobileSAM's file is identified by its
    git blob hash. A check that is None is not made (a hash is pinned only once verified).
    """

    model: str
    filename: str
    url: str
    md5_prefix: str | None = None
    git_blob_sha1: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class Family:
    """A model family: how its checkpoints look and what it does by default.

    recognise(state_dict) -> the registry name of the model a state_dict holds, or None when it
    is not of this family (it may raise CheckpointError for a near miss, e.g. an unknown width).
    ignored_prefixes: checkpoint keys that images do not use (SAM 2's video memory modules); they
    are accepted and dropped before loading. rename_keys(state_dict, path) -> the state_dict under
    the model's parameter names (SAM 2's official files call the decoder "sam_mask_decoder"), raising
    CheckpointError for keys it does not know; None when the checkpoint's names are the model's.
    generator_defaults: the official automatic mask generator's parameters for what
    samkit.options.GeneratorOptions leaves to the family (None there), over SAM 1's.
    """

    name: str
    title: str
    recognise: Callable[[Mapping[str, torch.Tensor]], str | None]
    checkpoint_kind: str = ""  # how error messages name its checkpoints ("a SAM or MobileSAM checkpoint")
    ignored_prefixes: tuple[str, ...] = ()
    generator_defaults: Mapping[str, Any] = field(default_factory=dict)
    rename_keys: Callable[[Mapping[str, torch.Tensor], Any], dict[str, torch.Tensor]] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One model: its family, builder (an untrained model of this architecture), official
    checkpoint, names, and the facts `samkit info` shows without weights."""

    name: str
    family: Family
    title: str
    build: Callable[[], nn.Module]
    checkpoint: Checkpoint
    aliases: tuple[str, ...] = ()
    encoder: str = ""
    parameters: int | None = None  # of the image path, as the official file holds them


# -- SAM 1 (segment-anything) and MobileSAM ------------------------------------------------------

def _build_sam1(name: str, encoder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from .modeling.prompt_encoder import PromptEncoder
        from .modeling.sam import Sam
        from .modeling.mask_decoder import MaskDecoder

        return Sam(encoder(), PromptEncoder(), MaskDecoder(), arch=name)

    return build


def _vit(embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...]) -> Callable[[], nn.Module]:
    def encoder() -> nn.Module:
        from .modeling.backbones.vit import ImageEncoderViT

        return ImageEncoderViT(
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, global_attn_indexes=global_attn_indexes
        )

    return encoder


def _tiny_vit() -> nn.Module:
    from .modeling.backbones.tiny_vit import TinyViT

    return TinyViT()


_VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def _recognise_sam1(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:
        return "mobile_sam"
    pos_embed = state_dict.get("image_encoder.pos_embed")
    if pos_embed is None or pos_embed.ndim != 4 or "mask_decoder.iou_token.weight" not in state_dict:
        return None
    width = pos_embed.shape[-1]
    if width not in _VIT_WIDTHS:
        raise CheckpointError(
            f"ViT image encoder of width {width} is not SAM ViT-B (768), ViT-L (1024) or ViT-H (1280)"
        )
    return _VIT_WIDTHS[width]


SAM1 = Family("sam", "Segment Anything (SAM 1) and MobileSAM", _recognise_sam1, "a SAM or MobileSAM checkpoint",
              generator_defaults=FAMILY_GENERATOR_DEFAULTS["sam"])

META_SAM1 = "https://dl.fbaipublicfiles.com/segment_anything/"

MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model record (its name and aliases must be new)."""
    for name in (spec.name, *spec.aliases):
        if name.lower() in _ALIASES and _ALIASES[name.lower()] != spec.name:
            raise ValueError(f"model name {name!r} is already taken by {_ALIASES[name.lower()]!r}")
    MODELS[spec.name] = spec
    for name in (spec.name, *spec.aliases):
        _ALIASES[name.lower()] = spec.name
    return spec


_ALIASES: dict[str, str] = {}

for _name, _title, _file, _md5, _args, _params in (
    ("vit_b", "SAM ViT-B", "sam_vit_b_01ec64.pth", "01ec64", (768, 12, 12, (2, 5, 8, 11)), 93_735_472),
    ("vit_l", "SAM ViT-L", "sam_vit_l_0b3195.pth", "0b3195", (1024, 24, 16, (5, 11, 17, 23)), 312_342_832),
    ("vit_h", "SAM ViT-H", "sam_vit_h_4b8939.pth", "4b8939", (1280, 32, 16, (7, 15, 23, 31)), 641_090_608),
):
    _size = _name[-1]
    register(ModelSpec(
        _name, SAM1, _title, _build_sam1(_name, _vit(*_args)),
        Checkpoint(_name, _file, META_SAM1 + _file, md5_prefix=_md5),
        aliases=(f"sam_vit_{_size}", f"sam_{_size}", f"sam_{_size}.pt", _file),
        encoder=f"ViT, width {_args[0]}, {_args[1]} blocks, {_args[2]} heads, global attention in blocks "
        f"{', '.join(map(str, _args[3]))}",
        parameters=_params,
    ))

register(ModelSpec(
    "mobile_sam", SAM1, "MobileSAM", _build_sam1("mobile_sam", _tiny_vit),
    Checkpoint(
        "mobile_sam", "mobile_sam.pt", "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        git_blob_sha1="7ef2d090979fd9853adf17b7a99c8b94a1c5a6a7",
    ),
    aliases=("mobilesam", "mobile_sam.pt", "vit_t"),
    encoder="TinyViT-5M, stage widths 64/128/160/320, depths 2/2/6/2",
    parameters=9_808_452,  # 10,130,092 in the file, less the unused classifier head's 321,640
))


# -- SAM 2 / 2.1 (facebookresearch/sam2), images only ---------------------------------------------

def _build_sam2(size: str, version: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from .modeling.sam2.model import build_sam2

        return build_sam2(size, version)

    return build


SAM2 = Family(
    "sam2", "Segment Anything 2 / 2.1 (images)", recognise_sam2, "a SAM 2 / 2.1 checkpoint",
    ignored_prefixes=VIDEO_KEY_PREFIXES,
    # SAM2AutomaticMaskGenerator's (sam2 1.1.0) defaults that differ from SAM 1's
    generator_defaults=FAMILY_GENERATOR_DEFAULTS["sam2"],
    rename_keys=image_weights,
)

META_SAM2 = {"2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/",
             "2.0": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"}
# Meta publishes no hashes for these files; third parties list MD5s that could not be checked
# here (no download possible), so none is pinned: a download is checked for being a SAM 2
# checkpoint of the right size when it is loaded, not against a hash.
_SAM2_SIZES = (
    # size, title, Ultralytics' letter, image-path parameters (the Sam2 modules; the official
    # files also hold the video model's)
    ("tiny", "Hiera-T", "t", 31_440_721),
    ("small", "Hiera-S", "s", 38_538_577),
    ("base_plus", "Hiera-B+", "b", 73_328_401),
    ("large", "Hiera-L", "l", 216_924_865),
)

for _version, _prefix in (("2.1", "sam2.1"), ("2.0", "sam2")):
    for _size, _title, _letter, _params in _SAM2_SIZES:
        _name = f"{_prefix}_hiera_{_size}"
        _file = f"{_name}.pt"
        _config = HIERA_CONFIGS[_size]
        register(ModelSpec(
            _name, SAM2, f"SAM {_version} {_title}", _build_sam2(_size, _version),
            Checkpoint(_name, _file, META_SAM2[_version] + _file),
            # Ultralytics' file names (b is base_plus); short names as ours for SAM 1 ("sam2.1_t")
            aliases=(_file, f"{_prefix}_{_letter}.pt", f"{_prefix}_{_letter}", f"{_prefix}_{_size}"),
            encoder=f"Hiera, width {_config.embed_dim}, stages {'/'.join(map(str, _config.stages))}, "
            f"{_config.num_heads} head(s) at first, global attention in blocks "
            f"{', '.join(map(str, _config.global_att_blocks))}; FPN neck",
            parameters=_params,
        ))

FAMILIES: dict[str, Family] = {SAM1.name: SAM1, SAM2.name: SAM2}
DEFAULT_MODEL = "mobile_sam"


def lookup(name: str) -> ModelSpec | None:
    """The record for a model name or alias (case-insensitive), or None."""
    key = _ALIASES.get(str(name).lower())
    return MODELS[key] if key is not None else None


def names() -> list[str]:
    """Registry names, in the order they were registered."""
    return list(MODELS)


def aliases() -> dict[str, str]:
    """Every accepted name (lower case) -> its registry name."""
    return dict(_ALIASES)


def recognise(state_dict: Mapping[str, torch.Tensor]) -> ModelSpec | None:
    """The record of the model a state_dict holds, asking each family; None if none claims it."""
    for family in FAMILIES.values():
        name = family.recognise(state_dict)
        if name is not None:
            return MODELS[name]
    return None


def spec_of(model: nn.Module) -> ModelSpec:
    """The record of a loaded or built model (by its `arch`)."""
    return MODELS[model.arch]
