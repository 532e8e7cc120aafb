"""The one error type the GIS adapter raises on bad input.

``GeoError`` subclasses ``samkit.SamkitError`` (so the ``samkit`` CLI prints it as one line,
``samkit: error: ...``, exit 2) and ``ValueError``. Every message says what was wrong and how to
fix it. This module imports only the standard library and samkit's own error module.
"""

from __future__ import annotations

try:  # the core's base error; the adapter must work even while the core is being built
    from samkit.errors import SamkitError as _Base
except ImportError:  # pragma: no cover - only before core/errors.py existed
    class _Base(Exception):  # type: ignore[no-redef]
        pass


class GeoError(_Base, ValueError):
    """Bad raster, prompt or output for ``samkit.geo``: the message says what and how to fix it."""


class RemoteReadError(GeoError):
    """Pixels of a raster read over the network (a URL, /vsicurl/, /vsis3/, ...) could not be
    fetched: usually the network or the server, not the file, so a re-run can resume."""


__all__ = ["GeoError", "RemoteReadError"]
