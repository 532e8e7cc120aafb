"""Any Python callable as the detector: `fn(image) -> boxes, scores, classes`."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..records import AnnotateError, Detections, ImageInfo
from .base import DetectOptions, Detector


class FunctionDetector(Detector):
    """Calls `fn(image)` with an HxWx3 uint8 RGB array. It returns a Detections, a tuple
    (boxes (N, 4) XYXY pixels, scores (N,), class ids (N,)) with optional class names (a dict
    id -> name, or a list) as a fourth item, or a dict with those keys ("boxes", "scores",
    "classes", "names"). Names may also be an attribute `names` of the callable. The score
    threshold, class filter and max_det apply to what it returns (no NMS: that is its own)."""

    kind = "Python callable"

    def __init__(self, fn: Callable[[np.ndarray], Any], options: DetectOptions) -> None:
        super().__init__(options)
        self.fn = fn
        self.names = _names(getattr(fn, "names", None))

    def detect(self, image: np.ndarray, info: ImageInfo) -> Detections:
        out = self.fn(image)
        if isinstance(out, Detections):
            return out if out.names or not self.names else Detections(out.boxes, out.scores, out.class_ids, self.names)
        names: Any = None
        if isinstance(out, dict):
            try:
                boxes, scores, classes = out["boxes"], out["scores"], out["classes"]
            except KeyError as exc:
                raise AnnotateError(f"the detector function returned a dict without {exc}; "
                                    "give 'boxes', 'scores' and 'classes'") from None
            names = out.get("names")
        elif isinstance(out, (tuple, list)) and len(out) in (3, 4):
            boxes, scores, classes = out[:3]
            names = out[3] if len(out) == 4 else None
        else:
            raise AnnotateError(
                f"the detector function returned {type(out).__name__}; return (boxes, scores, classes) or a "
                "samkit.annotate.Detections"
            )
        return Detections(_numpy(boxes), _numpy(scores), _numpy(classes), _names(names) or self.names)

    def fingerprint(self) -> dict[str, Any]:
        fn = self.fn
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        return {"kind": self.kind, "function": f"{getattr(fn, '__module__', '?')}.{name}"}


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _names(names: Any) -> dict[int, str]:
    if names is None:
        return {}
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    return {i: str(v) for i, v in enumerate(names)}
