"""samkit.annotate: auto-annotation. A detector's boxes, existing box labels or a text prompt in;
SAM's masks out as a YOLO, COCO, Label Studio (or FiftyOne) segmentation dataset.

    import samkit
    samkit.auto_annotate("images/", det_model="yolo11n.onnx")                    # Ultralytics' call
    samkit.auto_annotate("images/", det_model="labels/")                          # existing YOLO boxes
    samkit.auto_annotate("images/", "IDEA-Research/grounding-dino-tiny", text="building. tree.", format="coco")

Light at import: detectors, SAM and formats load when a run needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "auto_annotate": ".run",
    "AnnotateWarning": ".run",
    "Pipeline": ".run",
    "AnnotateError": ".records",
    "AnnotateSummary": ".records",
    "Detections": ".records",
    "ImageInfo": ".records",
    "ObjectMask": ".records",
    "ShapeOptions": ".records",
    "DetectSegmenter": ".segment_text",
    "FoundObject": ".segment_text",
    "text_segmenter": ".segment_text",
    "DetectOptions": ".detectors.base",
    "Detector": ".detectors.base",
    "load_detector": ".detectors",
    "register_format": ".formats",
    "format_names": ".formats",
    "Writer": ".formats.base",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'samkit.annotate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
