"""samkit.fiftyone: Segment Anything for FiftyOne datasets, and the FiftyOne plugin ``@samkit/fiftyone``.

This one file is two things:

- the package ``samkit.fiftyone`` (``pip install "samkit[fiftyone]"``): ``SamModel`` for
  ``dataset.apply_model``, and ``segment_everything`` / ``segment_prompts`` for bulk runs with
  resume, per-sample error records and PNG mask storage;
- the entry point of the FiftyOne plugin in this directory (``fiftyone.yml``): FiftyOne executes
  this file by path and calls :func:`register`.

It stays light (no fiftyone or torch import at import time) and imports its modules by their
absolute ``samkit.fiftyone.*`` names, never relatively: when FiftyOne loads the plugin it names
the module after the plugin's folder below ``FIFTYONE_PLUGINS_DIR``, which for this repository's
``plugins/`` folder is ``fiftyone`` -- the name of FiftyOne itself.
"""

from __future__ import annotations

import sys

__all__ = [
    "SamModel",
    "SamModelConfig",
    "RunSummary",
    "segment_everything",
    "segment_prompts",
    "segment_text",
    "finetune",
    "labelled_images",
    "register",
]

_LAZY = {
    "SamModel": "samkit.fiftyone.model",
    "SamModelConfig": "samkit.fiftyone.model",
    "RunSummary": "samkit.fiftyone.runner",
    "segment_everything": "samkit.fiftyone.runner",
    "segment_prompts": "samkit.fiftyone.runner",
    "segment_text": "samkit.fiftyone.runner",
    "finetune": "samkit.fiftyone.training",
    "labelled_images": "samkit.fiftyone.training",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def register(plugin) -> None:
    """Called by FiftyOne with the plugin context: registers every operator in fiftyone.yml."""
    from samkit.fiftyone.operators import OPERATORS

    for operator_cls in OPERATORS:
        plugin.register(operator_cls)


def _restore_shadowed_fiftyone() -> None:
    """Put the real ``fiftyone`` package back into ``sys.modules`` if loading us displaced it.

    FiftyOne's plugin loader runs ``sys.modules[name] = module`` for the plugin's ``__init__.py``,
    with ``name`` derived from the plugin's folder relative to ``FIFTYONE_PLUGINS_DIR``. With
    ``FIFTYONE_PLUGINS_DIR=<samkit checkout>/plugins`` that name is ``fiftyone``, and every later
    ``import fiftyone`` in the process would get this file instead of FiftyOne. FiftyOne's own
    modules still hold the real package (``import fiftyone as fo``), so it is found there.
    """
    this = sys.modules.get(__name__)
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("fiftyone.") or module is None:
            continue
        candidate = getattr(module, "fo", None)
        if (
            candidate is not None
            and candidate is not this
            and getattr(candidate, "__name__", None) == "fiftyone"
            and hasattr(candidate, "Dataset")
        ):
            sys.modules["fiftyone"] = candidate
            return


if __name__ == "fiftyone":
    _restore_shadowed_fiftyone()
