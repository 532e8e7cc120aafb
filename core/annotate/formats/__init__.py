"""Output formats of auto-annotation, by name.

yolo, coco and labelstudio are built in. Other packages add formats without core knowing them:
either call register_format(name, factory) or declare an entry point in the group
`samkit.annotate_formats` (name = "package.module:WriterClass"); samkit's FiftyOne adapter adds
`fiftyone` that way. A factory is called as factory(output_dir, **format_options) and returns a
samkit.annotate.formats.base.Writer.
"""

from __future__ import annotations

from importlib import metadata
from typing import Callable

from ..records import AnnotateError
from .base import Writer

ENTRY_POINT_GROUP = "samkit.annotate_formats"

_BUILT_IN = {
    "yolo": "samkit.annotate.formats.yolo:YoloWriter",
    "coco": "samkit.annotate.formats.coco:CocoWriter",
    "labelstudio": "samkit.annotate.formats.labelstudio:LabelStudioWriter",
}
_REGISTERED: dict[str, Callable[..., Writer]] = {}

# what to install for a format other packages provide (an editable install made before the
# format existed also needs reinstalling: entry points are written at install time)
_EXTRAS = {"fiftyone": 'pip install -e ".[fiftyone]" (or "samkit[fiftyone]")'}


def register_format(name: str, factory: Callable[..., Writer]) -> None:
    """Make `factory` the writer of format `name` in this process."""
    _REGISTERED[name.lower()] = factory


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name.lower(): ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def format_names() -> list[str]:
    """Every format this installation can write."""
    return sorted({*_BUILT_IN, *_REGISTERED, *_entry_points()})


def get_format(name: str) -> Callable[..., Writer]:
    """The writer factory of format `name` (AnnotateError naming the choices when unknown)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key in _REGISTERED:
        return _REGISTERED[key]
    if key in _BUILT_IN:
        module, _, attr = _BUILT_IN[key].partition(":")
        import importlib

        return getattr(importlib.import_module(module), attr)
    found = _entry_points().get(key)
    if found is not None:
        try:
            return found.load()
        except ImportError as exc:
            hint = _EXTRAS.get(key, "")
            raise AnnotateError(f"format {name!r} cannot load ({exc}){'; ' + hint if hint else ''}") from None
    hint = f" ({name} needs {_EXTRAS[key]})" if key in _EXTRAS else ""
    raise AnnotateError(f"unknown format {name!r}; choose from {', '.join(format_names())}{hint}")
