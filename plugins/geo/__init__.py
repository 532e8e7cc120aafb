"""samkit.geo: segment rasters of any size and write georeferenced vector polygons.

    import samkit.geo
    gdf = samkit.geo.vectorize("scene.tif", "objects.gpkg", tile_size=1024, overlap=128)

Needs the ``geo`` extra (``pip install "samkit[geo]"``). Importing this package imports only the
standard library; rasterio, geopandas and friends load on first use of a function.
"""

from __future__ import annotations

from .errors import GeoError, RemoteReadError

_LAZY = {
    "vectorize": ("api", "vectorize"),
    "info": ("api", "info"),
    "format_info": ("api", "format_info"),
    "TileGrid": ("tiling", "TileGrid"),
    "load_prompts": ("prompts", "load_prompts"),
    "regularize": ("polygons", "regularize"),
    "areas_m2": ("polygons", "areas_m2"),
}

__all__ = ["GeoError", "RemoteReadError", *_LAZY]


def _missing_extra(exc: ImportError) -> GeoError:
    return GeoError(f'samkit.geo needs the geo extra ({exc.name or exc} is missing): pip install "samkit[geo]"')


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        try:
            module = importlib.import_module(f"{__name__}.{mod}")
        except ImportError as exc:
            if exc.name and exc.name.split(".")[0] in {"rasterio", "geopandas", "shapely", "pyproj", "pyogrio",
                                                        "affine", "pyarrow"}:
                raise _missing_extra(exc) from exc
            raise
        value = getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
