"""The oracle side of the SAM 2 / 2.1 parity tests: the official ``sam2`` package (1.1.0).

* ``official_sam2()``: imports ``sam2`` (which initialises hydra) and the modules that import
  torchvision, with a small stand-in for the five torchvision names they use where torchvision is
  not importable (the CPU torch here has none): ``transforms.ToTensor``, ``Resize`` and
  ``Normalize`` (``SAM2Transforms`` scripts the last two with TorchScript, so they are scriptable
  modules), and ``ops.boxes.batched_nms`` / ``box_area`` (those of ``oracle``). The stand-in
  computes what torchvision computes: ToTensor divides uint8 by 255 into float32 CHW; Resize of a
  float tensor is ``F.interpolate(bilinear, align_corners=False, antialias=True)`` and returns the
  input unchanged when the size already matches; Normalize is ``(x - mean) / std``. It leaves
  ``sys.modules`` right after the import.
* ``official_model(size, version, seed)``: an official ``SAM2Base`` built from the package's hydra
  config (``build_sam2(..., apply_postprocessing=True)``, as its image predictor is used), with
  every weight perturbed (``oracle.perturb_``) and the hypernetwork outputs scaled so that the
  logits spread like a trained model's; its state_dict saved as ``{"model": ...}``, the official
  checkpoint format. Cached per process.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
import warnings
from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:
    from . import oracle
except ImportError:
    import oracle

SIZES = ("tiny", "small", "base_plus", "large")
CONFIG_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
SEED = 20240929


def config_name(size: str, version: str = "2.1") -> str:
    """The package's hydra config for one model, e.g. ``configs/sam2.1/sam2.1_hiera_t.yaml``."""
    prefix = "sam2.1" if version == "2.1" else "sam2"
    return f"configs/{prefix}/{prefix}_hiera_{CONFIG_SUFFIX[size]}.yaml"


# ---------------------------------------------------------------------------------------------
# torchvision stand-in (the names sam2 1.1.0 imports)
# ---------------------------------------------------------------------------------------------


class ToTensor:
    """torchvision.transforms.ToTensor for HWC uint8 arrays and PIL images: CHW float32 in [0, 1]."""

    def __call__(self, pic):
        arr = np.asarray(pic)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        img = torch.from_numpy(np.ascontiguousarray(arr.transpose((2, 0, 1)))).contiguous()
        if img.dtype == torch.uint8:
            return img.to(dtype=torch.get_default_dtype()).div(255)
        return img


class Resize(nn.Module):
    """torchvision.transforms.Resize((h, w)) on a float tensor: bilinear with antialias."""

    def __init__(self, size: List[int]) -> None:
        super().__init__()
        self.size = [int(s) for s in size]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if [img.shape[-2], img.shape[-1]] == self.size:
            return img
        squeeze = img.dim() == 3
        x = img.unsqueeze(0) if squeeze else img
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x.squeeze(0) if squeeze else x


class Normalize(nn.Module):
    """torchvision.transforms.Normalize(mean, std) (not in place)."""

    def __init__(self, mean: List[float], std: List[float]) -> None:
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return (tensor - mean) / std


def _torchvision_stub() -> dict[str, types.ModuleType]:
    tv = types.ModuleType("torchvision")
    tv.__samkit_stand_in__ = True
    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor, transforms.Resize, transforms.Normalize = ToTensor, Resize, Normalize
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    for mod in (ops, boxes):
        mod.batched_nms = oracle.batched_nms
        mod.box_area = oracle.box_area
        mod.nms = oracle.nms
    tv.transforms, tv.ops, ops.boxes = transforms, ops, boxes
    return {
        "torchvision": tv,
        "torchvision.transforms": transforms,
        "torchvision.ops": ops,
        "torchvision.ops.boxes": boxes,
    }


_MODULES = ("sam2.build_sam", "sam2.sam2_image_predictor", "sam2.automatic_mask_generator")


@functools.lru_cache(maxsize=None)
def official_sam2() -> types.ModuleType:
    """Import ``sam2`` and its image modules; with the torchvision stand-in where torchvision cannot import."""
    try:
        import torchvision  # noqa: F401

        for name in _MODULES:
            importlib.import_module(name)
        return importlib.import_module("sam2")
    except Exception:  # not installed, or a build that does not match the installed torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    stub = _torchvision_stub()
    sys.modules.update(stub)
    try:
        for name in _MODULES:
            importlib.import_module(name)
        return importlib.import_module("sam2")
    finally:
        for name in stub:
            if sys.modules.get(name) is stub[name]:
                del sys.modules[name]


def uses_torchvision_stand_in() -> bool:
    official_sam2()
    transforms = importlib.import_module("sam2.utils.transforms")
    return transforms.Resize is Resize


# ---------------------------------------------------------------------------------------------
# official models with perturbed weights, saved in the official checkpoint format
# ---------------------------------------------------------------------------------------------

LOGIT_GAIN = 20.0


def build_official(size: str, version: str = "2.1") -> nn.Module:
    """A fresh official SAM2Base (random init, eval mode) as ``build_sam2`` makes it for images."""
    official_sam2()
    from sam2.build_sam import build_sam2

    return build_sam2(config_name(size, version), ckpt_path=None, device="cpu", apply_postprocessing=True)


@functools.lru_cache(maxsize=None)
def official_model(size: str, version: str = "2.1", seed: int = SEED) -> tuple[nn.Module, Path]:
    """(official SAM2Base with perturbed weights in eval mode, path of its ``{"model": sd}`` file)."""
    torch.manual_seed(seed)
    model = build_official(size, version)
    oracle.perturb_(model, seed + 1)
    # Random weights give low-res logits of a small spread, where float32 rounding flips a visible
    # share of pixels at the 0 threshold; scale the hypernetwork outputs so that the logits have
    # a unit-like spread, as a trained model's do.
    with torch.no_grad():
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(LOGIT_GAIN)
            mlp.layers[-1].bias.mul_(LOGIT_GAIN)
    model.eval()
    path = oracle._tmpdir() / f"sam{version}_hiera_{size}_perturbed_{seed}.pt"
    torch.save({"model": model.state_dict()}, path)
    return model, path


def image_predictor(model: nn.Module):
    """The official ``SAM2ImagePredictor`` on ``model`` (threshold 0, no hole filling)."""
    official_sam2()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():  # SAM2Transforms scripts its transforms; torch 2.13 deprecates that
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning)
        return SAM2ImagePredictor(model)
