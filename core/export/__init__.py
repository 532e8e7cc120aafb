"""Exporting samkit models to ONNX, and running the exported files without PyTorch.

    samkit.export(model, output_dir, format="onnx", parts=None, opset=None, quantize=False,
                  dynamic_points=True, single_mask=False, overwrite=False, num_points=2,
                  fiftyone_app=False) -> ExportResult
    samkit.OnnxPredictor(output_dir)   # numpy + onnxruntime; set_image / predict as samkit.Predictor

This package is itself callable (`samkit.export(...)` is `samkit.export.export(...)`): the issue
names both the function and the package `samkit.export`, and once a submodule is imported Python
sets the package as the `samkit.export` attribute, so the package has to be the function too.

Nothing here imports torch at import time: `OnnxPredictor` (in `onnx_predictor`) must work where
PyTorch is not installed. The exporter's modules import torch when an export runs. `export` is
`exporter.export_model` (its docstring lists the options).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

# torch-free at import (torch is imported when an export runs)
from .exporter import ExportResult
from .exporter import export_model as export

if TYPE_CHECKING:
    from .onnx_predictor import OnnxPredictor

__all__ = ["ExportResult", "OnnxPredictor", "export"]


def __getattr__(name: str) -> Any:
    if name == "OnnxPredictor":
        from .onnx_predictor import OnnxPredictor

        return OnnxPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> "ExportResult":
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
