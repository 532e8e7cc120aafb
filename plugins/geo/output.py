"""Writing results: vector formats by extension, atomically; the instance-id GeoTIFF."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from samkit.utils.files import atomic_output, temporary_owner, temporary_path

from .errors import GeoError

#: extension -> (format name, how it is written)
FORMATS = {
    ".gpkg": ("GPKG", "pyogrio"),
    ".geojson": ("GeoJSON", "pyogrio"),
    ".json": ("GeoJSON", "pyogrio"),
    ".shp": ("ESRI Shapefile", "pyogrio"),
    ".fgb": ("FlatGeobuf", "pyogrio"),
    ".parquet": ("GeoParquet", "arrow"),
    ".geoparquet": ("GeoParquet", "arrow"),
}
#: files that belong to a shapefile ``name.shp`` as ``name`` + one of these (any case): an overwrite
#: replaces or removes all of them
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".shp.xml", ".aih", ".ain",
                      ".atx", ".fbn", ".fbx", ".ixs", ".mxs", ".qpj")
#: what GDAL may add beside a temporary file while writing it (SQLite journals, PAM metadata)
TEMPORARY_COMPANIONS = ("", "-journal", "-wal", "-shm", ".aux.xml")
#: shapefile field names are limited to 10 characters
SHAPEFILE_NAMES = {"stability_score": "stability"}


def output_format(dst) -> str:
    ext = Path(dst).suffix.lower()
    if ext not in FORMATS:
        raise GeoError(
            f"cannot tell the output format from {os.fspath(dst)!r}: use one of the extensions "
            + ", ".join(f"{e} ({f[0]})" for e, f in FORMATS.items())
        )
    return FORMATS[ext][0]


def check_output(dst, *, overwrite: bool, what: str = "output", src=None) -> Path:
    """Fail before any work when the output cannot be written (checked by really creating a
    file in its directory, which also catches read-only mounts and missing permissions)."""
    if dst is None or not os.fspath(dst).strip():
        raise GeoError(f"no {what} path given: pass e.g. -o buildings.gpkg")
    path = Path(os.fspath(dst)).expanduser()
    if what == "output":
        output_format(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise GeoError(f"cannot write {what} {path}: directory {parent} does not exist")
    if path.is_dir():
        raise GeoError(f"cannot write {what} {path}: it is a directory")
    if src is not None and isinstance(src, (str, os.PathLike)) and os.path.exists(os.fspath(src)):
        if path.exists() and os.path.samefile(path, os.fspath(src)):
            raise GeoError(f"{what} {path} is the input raster; choose another path")
    if path.exists() and not overwrite:
        raise GeoError(f"{what} {path} exists; pass overwrite=True (CLI --overwrite) to replace it")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GeoError(f"cannot write {what} {path}: directory {parent} is not writable ({exc.strerror})") from exc
    return path


def check_output_crs(dst, crs) -> None:
    """Fail before any work when ``dst``'s format cannot carry ``crs``: GeoJSON names a CRS only
    by its EPSG code (and RFC 7946 readers assume EPSG:4326), so polygons in any other CRS would
    lose their place on the map."""
    if crs is None or output_format(dst) != "GeoJSON" or crs.to_epsg():
        return
    from .raster import crs_label

    raise GeoError(
        f"GeoJSON can only name a CRS by its EPSG code and the output's CRS, {crs_label(crs)}, has none: readers"
        f" would misplace the polygons. Write {Path(os.fspath(dst)).stem}.gpkg, .fgb or .parquet instead, or"
        " reproject with to_crs='EPSG:4326' (CLI --to-crs EPSG:4326)"
    )


def _process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # not a PID at all
        return False
    return True


def _process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch, to about a second), read from Linux's
    /proc; None where that cannot be read (another system, the process gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # field 22, starttime in clock ticks after boot; the name (field 2) may hold spaces
            start_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _written_by_a_running_process(pid: int, modified: float) -> bool:
    """Whether the process that wrote a temporary file last modified at `modified` may still be
    writing it. PIDs are reused, within a container from the same small numbers on every run
    (often this very process's): a process that started after the file was last written is not
    its writer."""
    if not _process_exists(pid):
        return False
    started = _process_start_time(pid)
    return started is None or started <= modified + 2.0  # the boot time is rounded to seconds


def remove_stale_temporaries(path) -> None:
    """Remove the temporary files that runs killed while writing ``path`` left beside it: only
    names made for ``path`` by ``samkit.utils.files.atomic_output`` (``.{stem}.tmp-{pid}-{8 hex}{suffix}``,
    with GDAL's journal or .aux.xml) or by ``_write_shapefile`` (that name without the suffix, a
    directory), and only those whose process no longer exists, or started after the file was
    last written (its PID reused)."""
    path = Path(os.fspath(path))
    endings = {path.suffix + c for c in TEMPORARY_COMPANIONS}
    if path.suffix.lower() == ".shp":
        endings.add("")
    try:
        with os.scandir(path.parent) as it:
            entries = [(e, temporary_owner(path, e.name)) for e in it]
    except OSError:
        return
    for entry, owner in entries:
        if owner is None or owner[1] not in endings:
            continue
        try:
            if _written_by_a_running_process(owner[0], entry.stat(follow_symlinks=False).st_mtime):
                continue
        except OSError:  # gone meanwhile
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:  # another run cleaning up at the same moment, or not ours to delete
            pass


def _prepare(gdf, fmt: str):
    from shapely.geometry import MultiPolygon

    gdf = gdf.copy()
    if fmt == "ESRI Shapefile":
        gdf = gdf.rename(columns=SHAPEFILE_NAMES)
    kinds = set(gdf.geometry.geom_type.dropna())
    if "MultiPolygon" in kinds and "Polygon" in kinds:
        gdf = gdf.set_geometry(
            [g if g is None or isinstance(g, MultiPolygon) else MultiPolygon([g]) for g in gdf.geometry],
            crs=gdf.crs,
        )
    return gdf


def write_vector(gdf, dst, *, layer: str | None = None) -> Path:
    """Write ``gdf`` to ``dst`` in the format its extension names; atomically (a temporary file
    in the same directory, renamed over ``dst`` once complete: an interrupted run leaves no file
    that looks finished). A shapefile's sidecars are moved first and the .shp last. ``layer``
    names the layer (default: the file's stem); given for an existing GeoPackage, only that layer
    is replaced and the file's other layers are kept."""
    import warnings

    path = Path(os.fspath(dst))
    fmt = output_format(path)
    remove_stale_temporaries(path)
    gdf = _prepare(gdf, fmt)
    geometry_type = "Polygon" if len(gdf) == 0 else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="'crs' was not provided")  # pixel space: no CRS on purpose
            if fmt == "ESRI Shapefile":
                _write_shapefile(gdf, path, geometry_type)
            else:
                keep_layers = fmt == "GPKG" and layer is not None and path.exists()
                _write_single_file(gdf, path, fmt, layer or path.stem, geometry_type, keep_layers)
    except OSError as exc:
        raise GeoError(f"could not write {path}: {exc}") from exc
    return path


def _shapefile_set(path: Path) -> list[Path]:
    """The files of the shapefile ``path`` that exist (the .shp and its sidecars, any case)."""
    names = {(path.stem + ext).lower() for ext in (".shp", *SHAPEFILE_SIDECARS)}
    return [p for p in path.parent.iterdir() if p.name.lower() in names and p.is_file()]


def _write_shapefile(gdf, path: Path, geometry_type) -> None:
    # named like atomic_output's files, so that remove_stale_temporaries knows it after a kill
    tmpdir = temporary_path(path, suffix="")
    tmpdir.mkdir()
    try:
        gdf.to_file(tmpdir / path.name, driver="ESRI Shapefile", engine="pyogrio", geometry_type=geometry_type,
                    encoding="UTF-8")
        written = sorted(tmpdir.iterdir(), key=lambda p: p.suffix.lower() == ".shp")  # .shp last
        new = {f.name for f in written}
        for stale in _shapefile_set(path):  # files of an older shapefile must not survive beside the new one
            if stale.name not in new:
                stale.unlink()
        for f in written:
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _write_single_file(gdf, path: Path, fmt: str, layer: str, geometry_type, keep_layers: bool = False) -> None:
    with atomic_output(path) as tmp:
        if keep_layers:  # a copy of the GeoPackage gets the layer (pyogrio replaces just that one)
            shutil.copy2(path, tmp)
        if fmt == "GeoParquet":
            gdf.to_parquet(tmp, index=False)
        else:  # the layer name is GeoJSON's "name" and FlatGeobuf's layer: never the temporary file's
            gdf.to_file(tmp, driver=fmt, engine="pyogrio", layer=layer, geometry_type=geometry_type)


def write_id_raster(objects_px, dst, *, width: int, height: int, crs, transform, block: int = 1024) -> Path:
    """A GeoTIFF of instance ids (uint32, 0 = no object) on the raster's grid: tiled 512 px,
    DEFLATE-compressed, written window by window (memory bounded by the window), atomically.
    Where objects overlap the smaller one wins. ``objects_px``: (id, geometry in pixel coords)."""
    import rasterio
    import shapely
    from affine import Affine
    from rasterio.features import rasterize

    path = Path(os.fspath(dst))
    remove_stale_temporaries(path)
    items = sorted(objects_px, key=lambda it: -it[1].area)  # large first, small drawn on top
    geoms = np.array([g for _, g in items], dtype=object)
    ids = np.array([i for i, _ in items], dtype=np.uint32)
    tree = shapely.STRtree(geoms) if len(geoms) else None
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="uint32", nodata=0,
                   crs=None if crs is None else crs.to_wkt(), transform=transform, tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", predictor=2, BIGTIFF="IF_SAFER")
    try:
        with atomic_output(path) as tmp, rasterio.open(tmp, "w", **profile) as out:
            for r0 in range(0, height, block):
                for c0 in range(0, width, block):
                    h, w = min(block, height - r0), min(block, width - c0)
                    arr = np.zeros((h, w), np.uint32)
                    if tree is not None:
                        hits = np.sort(tree.query(shapely.box(c0, r0, c0 + w, r0 + h)))
                        if hits.size:
                            arr = rasterize(((geoms[k], int(ids[k])) for k in hits), out_shape=(h, w),
                                            transform=Affine.translation(c0, r0), fill=0, dtype="uint32")
                    out.write(arr, 1, window=rasterio.windows.Window(c0, r0, w, h))
    except OSError as exc:
        raise GeoError(f"could not write {path}: {exc}") from exc
    return path
