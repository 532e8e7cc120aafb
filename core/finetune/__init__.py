"""Fine-tuning SAM-family models on your own labels: `samkit.finetune(model, train, output, ...)`.

The package is itself callable: `samkit.finetune(...)` is `samkit.finetune.finetune(...)` (see
trainer.py), while the readers and records stay importable from it:

    import samkit
    result = samkit.finetune("mobile_sam", "train.json", "tuned.pt", epochs=10)
    records = samkit.finetune.read_coco("train.json", images="images/")

Calling a module needs its class to define __call__; assigning a ModuleType subclass to a
module's __class__ is the documented way (Python data model, "Customizing module attribute
access"), and it keeps one name for the function users call and the package they import from.
Names load on first use (PEP 562), so the command line can build its parser without torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_LAZY = {
    "LabelledImage": "data", "LabelledObject": "data", "decode_mask": "data", "object_from_mask": "data",
    "object_from_polygons": "data", "object_from_rle": "data", "read_coco": "data", "read_dataset": "data",
    "read_yolo": "data", "select_classes": "data", "split_validation": "data",
    "DecoderOutput": "family", "Sam2Family": "family", "SamFamily": "family", "TrainingFamily": "family",
    "family_for": "family",
    "FinetuneResult": "trainer", "FinetuneSettings": "trainer", "Progress": "trainer", "finetune": "trainer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'samkit.finetune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return self.finetune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
