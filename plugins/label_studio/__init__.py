"""samkit.label_studio: a Label Studio ML backend serving SAM / MobileSAM.

Start it with `samkit label-studio serve` (or `python -m samkit.label_studio serve`); in Python,
`create_app(Settings.from_env())` gives the FastAPI app. Heavy imports happen on first use, so
importing this package (and its `cli`) stays cheap.
"""

from __future__ import annotations

__all__ = ["SamBackend", "Settings", "create_app", "parse_label_config"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "SamBackend":
        from .backend import SamBackend

        return SamBackend
    if name == "Settings":
        from .settings import Settings

        return Settings
    if name == "parse_label_config":
        from .label_config import parse_label_config

        return parse_label_config
    raise AttributeError(name)
