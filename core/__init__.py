"""samkit: Segment Anything (SAM, MobileSAM) in pure PyTorch, with one API for prompts and segment-everything.

Exports are loaded on first use (PEP 562), so `import samkit` and the command-line entry points
of the adapters stay light until a model is actually needed.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import CheckpointError, ImageError, PromptError, SamkitError

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    "CHECKPOINTS": "build",
    "build_sam": "build",
    "cache_dir": "build",
    "load_model": "build",
    "load_image": "image_io",
    "MaskGenerator": "mask_generator",
    "EmbeddingCache": "predictor",
    "Predictor": "predictor",
    "Sam": "sam",
    "SAM": "ultralytics_api",
    "Result": "ultralytics_api",
}
_SUBMODULES = {
    "build", "cli", "common", "errors", "files", "image_encoder", "image_io", "mask_decoder", "mask_generator",
    "mask_utils", "predictor", "prefetch", "prompt_encoder", "sam", "tiny_vit", "transformer", "transforms",
    "ultralytics_api", "visualize",
}

__all__ = ["CheckpointError", "ImageError", "PromptError", "SamkitError", *sorted(_LAZY_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _LAZY_EXPORTS:
        value = getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'samkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS) | _SUBMODULES)
