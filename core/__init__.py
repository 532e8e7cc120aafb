"""samkit: Segment Anything (SAM, MobileSAM) in pure PyTorch, with one API for prompts and segment-everything.

Exports are loaded on first use (PEP 562), so `import samkit` and the command-line entry points
of the adapters stay light until a model is actually needed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

from .errors import CheckpointError, DatasetError, ImageError, PromptError, SamkitError

__version__ = "0.1.0"

_LAZY_EXPORTS = {
    "auto_annotate": "annotate",
    "CHECKPOINTS": "build",
    "build_sam": "build",
    "cache_dir": "build",
    "load_model": "build",
    "load_image": "utils.image_io",
    "GeneratorOptions": "options",
    "MaskGenerator": "mask_generator",
    "ModelCache": "models",
    "get_model": "models",
    "model_source": "models",
    "ObjectMask": "prompts",
    "Prompt": "prompts",
    "best_first": "prompts",
    "segment_objects": "prompts",
    "OnnxPredictor": "export.onnx_predictor",
    "EmbeddingCache": "predictor",
    "Predictor": "predictor",
    "Sam": "modeling.sam",
    "SAM": "ultralytics_api",
    "SAMPredictor": "ultralytics_api",
    "Result": "ultralytics_api",
}
_SUBMODULES = {
    "annotate", "build", "cli", "errors", "export", "fast", "finetune", "image_state", "mask_generator",
    "modeling", "models", "options", "predictor", "prompts", "registry", "ultralytics_api", "utils",
}
# The utilities lived at the top of the package before the layout of issue 18 and are documented
# there (`from samkit import mask_utils`, `samkit.transforms.upscale_logits`, `from samkit.prefetch
# import prefetch`): those paths stay importable as aliases of the same module objects.
_MOVED_MODULES = {
    name: f"utils.{name}"
    for name in ("files", "image_io", "mask_utils", "memory", "prefetch", "transforms", "visualize")
}

__all__ = ["CheckpointError", "DatasetError", "ImageError", "PromptError", "SamkitError", *sorted(_LAZY_EXPORTS)]


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import samkit.<old name>` give the module at its new place (one module object, so
    state and monkeypatching are shared)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.rpartition(".")
        if prefix != __name__ or name not in _MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return importlib.import_module(f"{__name__}.{_MOVED_MODULES[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # already executed at its new place


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str) -> Any:
    if name in _LAZY_EXPORTS:
        value = getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _MOVED_MODULES:
        return importlib.import_module(f".{_MOVED_MODULES[name]}", __name__)
    raise AttributeError(f"module 'samkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS) | _SUBMODULES | set(_MOVED_MODULES))
