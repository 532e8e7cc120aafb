"""Detectors for auto-annotation, chosen by what `det_model` is (see load_detector)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..records import AnnotateError
from .base import DetectOptions, Detector, class_aware_nms, finalize

__all__ = ["DetectOptions", "Detector", "class_aware_nms", "finalize", "load_detector"]

KINDS = ("a folder of YOLO box labels (*.txt), a COCO JSON with boxes, a YOLO .onnx export, an Ultralytics .pt "
         "model, a GroundingDINO or OWLv2 model (Hugging Face id or folder) with text, or a Python callable")


def load_detector(det_model: Any, text: str | Sequence[str] | None, options: DetectOptions) -> Detector:
    """The detector `det_model` names:

    - a callable (not a path): FunctionDetector;
    - a folder: YOLO box labels (`*.txt`), or a transformers model folder (config.json) of
      GroundingDINO / OWLv2;
    - a `.json` file: COCO boxes; a `.onnx` file: a YOLO ONNX export; a `.pt` file or name
      (`yolo11n.pt`): an Ultralytics model (needs the ultralytics package);
    - a Hugging Face id of GroundingDINO or OWLv2 (`IDEA-Research/grounding-dino-tiny`);
    - None with text: GroundingDINO tiny.

    Text goes with text detectors only; a text detector needs text. Raises AnnotateError.
    """
    from .text import DEFAULT_TEXT_MODEL

    if det_model is None:
        if text is None:
            raise AnnotateError("give a detector (det_model): " + KINDS)
        det_model = DEFAULT_TEXT_MODEL
    if callable(det_model) and not isinstance(det_model, (str, os.PathLike)):
        from .function import FunctionDetector

        detector: Detector = FunctionDetector(det_model, options)
    else:
        detector = _from_path(str(det_model), text, options)
    if text is not None and not detector.takes_text:
        raise AnnotateError(
            f"text was given, but {det_model} is a {detector.kind}, which takes no text: use a text detector "
            f"(GroundingDINO or OWLv2, e.g. --det-model {DEFAULT_TEXT_MODEL}) or leave the text out"
        )
    return detector


def _from_path(name: str, text, options: DetectOptions) -> Detector:
    from .text import is_path, text_model_family

    path = Path(name).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        if (path / "config.json").is_file():
            if text_model_family(name) is None:
                raise AnnotateError(f"{path} is a transformers model folder, but not of GroundingDINO or OWLv2 "
                                    "(the text detectors samkit runs)")
            return _text(name, text, options)
        if any(p.suffix == ".txt" for p in path.iterdir()):
            from .labels import YoloLabels

            return YoloLabels(path, options)
        raise AnnotateError(f"{path} is a folder without YOLO label files (*.txt) or a transformers config.json: "
                            f"not a detector. det_model may be {KINDS}")
    if path.is_file():
        if suffix == ".json":
            from .labels import CocoBoxes

            return CocoBoxes(path, options)
        if suffix == ".onnx":
            from .yolo_onnx import YoloOnnx

            return YoloOnnx(path, options)
        if suffix in (".pt", ".pth"):
            from .ultralytics_pt import UltralyticsModel

            return UltralyticsModel(str(path), options)
        raise AnnotateError(f"{path}: unknown kind of detector file ({suffix or 'no suffix'}); "
                            f"det_model may be {KINDS}")
    if suffix in (".pt", ".pth") and len(path.parts) == 1:  # an Ultralytics name it downloads (yolo11n.pt)
        from .ultralytics_pt import UltralyticsModel

        return UltralyticsModel(name, options)
    if is_path(name):  # a missing file or folder, even one named like a text model
        raise AnnotateError(f"detector not found: {path}")
    if text_model_family(name) is not None:
        return _text(name, text, options)
    if suffix:
        raise AnnotateError(f"detector not found: {path}")
    raise AnnotateError(f"{name} is neither a file or folder here nor a GroundingDINO/OWLv2 model id; det_model may be "
                        f"{KINDS}")


def _text(name: str, text, options: DetectOptions) -> Detector:
    from .text import text_detector

    if text is None:
        raise AnnotateError(f"{name} is a text detector: give the text to look for, e.g. text='building. tree.' "
                            "(--text on the command line)")
    return text_detector(name, text, options)
