"""Exporting samkit models to ONNX, and running the exported files without PyTorch.

    samkit.export(model, output_dir, format="onnx", parts=None, opset=None, quantize=False,
                  dynamic_points=True, single_mask=False, overwrite=False) -> ExportResult
    samkit.OnnxPredictor(output_dir)   # numpy + onnxruntime; set_image / predict as samkit.Predictor

This package is itself callable (`samkit.export(...)` is `samkit.export.export(...)`): the issue
names both the function and the package `samkit.export`, and once a submodule is imported Python
sets the package as the `samkit.export` attribute, so the package has to be the function too.

Nothing here imports torch at import time: `OnnxPredictor` (in `onnx_predictor`) must work where
PyTorch is not installed. The exporter's modules import torch when an export runs.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .exporter import ExportResult
    from .onnx_predictor import OnnxPredictor

__all__ = ["ExportResult", "OnnxPredictor", "export"]


def export(
    model: Any,
    output_dir: Any,
    format: str = "onnx",
    parts: Any = None,
    opset: int | None = None,
    quantize: bool = False,
    dynamic_points: bool = True,
    single_mask: bool = False,
    overwrite: bool = False,
    num_points: int = 2,
    fiftyone_app: bool = False,
) -> "ExportResult":
    """Export `model` into the folder `output_dir`; see `samkit.export.exporter.export_model`.

    model: a loaded samkit model, or anything `samkit.load_model` takes (a registry name, an
    official or fine-tuned checkpoint file). parts: which graphs ("encoder", "decoder"; default
    all of the family's). quantize: also write an int8 (dynamic, onnxruntime) copy of the decoder.
    dynamic_points=False fixes the decoder's point count at `num_points`. single_mask: the decoder
    returns one mask chosen as the official export does, else all of the model's mask outputs.
    overwrite: replace an existing folder (refused otherwise). fiftyone_app (SAM 2 / 2.1): also
    write the encoder as `encoder.with_runtime_opt.ort`, so that the folder holds the two files
    the FiftyOne App's in-browser SAM 2 downloads from FIFTYONE_MODEL_WEIGHTS_BASE_SAM2. The folder
    is written completely or not at all. Returns an ExportResult (folder, files, the model.json metadata).
    """
    from .exporter import export_model

    return export_model(
        model, output_dir, format=format, parts=parts, opset=opset, quantize=quantize,
        dynamic_points=dynamic_points, single_mask=single_mask, overwrite=overwrite, num_points=num_points,
        fiftyone_app=fiftyone_app,
    )


def __getattr__(name: str) -> Any:
    if name == "OnnxPredictor":
        from .onnx_predictor import OnnxPredictor

        return OnnxPredictor
    if name == "ExportResult":
        from .exporter import ExportResult

        return ExportResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> "ExportResult":
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
