"""Reading rasters for segmentation: CRS, band choice, nodata, one global stretch, windowed reads.

Everything here reads windows (or a small decimated sample); nothing reads a whole raster.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.windows import Window

from .errors import GeoError, RemoteReadError

SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: pixels in the sample the global stretch is computed from
STRETCH_SAMPLE_PIXELS = 1 << 20
#: rasters up to this many pixels without overviews are sampled by one decimated read
DECIMATED_READ_MAX_PIXELS = 64 * 1024 * 1024


#: GDAL's block cache for samkit.geo's reads unless GDAL_CACHEMAX is set (GDAL's own default is
#: 5% of RAM, which on a large raster fills up with decompressed blocks)
GDAL_CACHE_BYTES = 128 * 1024 * 1024


# GDAL reads a remote raster with one HTTP range request per block run and by default gives up
# at the first failed one (GDAL_HTTP_MAX_RETRY 0): one 503 or timeout from a busy bucket would
# stop a run of hours. Retried requests wait 1 s, then longer (GDAL backs off exponentially).
HTTP_RETRY = {"GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "1"}


def gdal_env():
    """rasterio.Env bounding GDAL's block cache and retrying failed HTTP reads (HTTP_RETRY);
    GDAL_CACHEMAX, GDAL_HTTP_MAX_RETRY or GDAL_HTTP_RETRY_DELAY set by the user are kept."""
    options = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_BYTES}
    options.update({name: value for name, value in HTTP_RETRY.items() if name not in os.environ})
    return rasterio.Env(**options)


def gdal_bounded(fn):
    """Run ``fn`` inside ``gdal_env()``."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with gdal_env():
            return fn(*args, **kwargs)

    return wrapper


def transform_xy(transformer, x, y):
    """pyproj ``transformer.transform`` on arrays (pyproj mishandles arrays of one element)."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.size == 1:
        tx, ty = transformer.transform(float(x[0]), float(y[0]))
        return np.array([tx]), np.array([ty])
    return transformer.transform(x, y)


def apply_affine(t, x, y):
    """``t`` applied to coordinates (numbers or arrays), without affine's deprecated ``*``."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


def open_raster(src) -> rasterio.DatasetReader:
    """Open ``src`` (a path, URL or anything GDAL reads) or raise a GeoError saying why not."""
    if isinstance(src, rasterio.io.DatasetReaderBase):
        return src
    path = os.fspath(src)
    if not path:
        raise GeoError("no raster given: pass the path of a GeoTIFF, COG, VRT or other GDAL raster")
    if "://" not in path and not path.startswith("/vsi") and not os.path.exists(path):
        raise GeoError(f"raster not found: {path}")
    try:
        with warnings.catch_warnings():
            # a raster without georeferencing is answered by samkit's own one-line error (or by
            # --crs / --pixel-space); rasterio's two-line warning before it says nothing more
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise GeoError(f"cannot read raster {path}: {exc} (is it a raster GDAL can open?)") from exc
    if ds.count < 1:
        ds.close()
        raise GeoError(f"raster {path} has no bands")
    dtype = ds.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        ds.close()
        raise GeoError(f"raster {path} has pixel type {dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")
    return ds


#: names a CRS without a real name carries (GDAL writes them for custom WKT and PROJ strings)
NAMELESS = ("", "unknown", "unnamed", "undefined")


def crs_label(crs) -> str:
    """A short name for ``crs`` in messages: its EPSG or other authority code (IGNF:...), else
    its name, else, for a custom CRS whose WKT names it "unknown", its projection and datum."""
    if crs is None:
        return "none"
    pcrs = to_pyproj(crs)
    epsg = pcrs.to_epsg()
    if epsg:
        return f"EPSG:{epsg}"
    authority = pcrs.to_authority()
    if authority:
        return ":".join(authority)
    if pcrs.name.strip().lower() not in NAMELESS:
        return pcrs.name
    op = pcrs.coordinate_operation
    kind = op.method_name if op is not None else pcrs.type_name
    datum = pcrs.datum.name if pcrs.datum is not None else ""
    return f"custom {kind}" + (f" on {datum}" if datum.strip().lower() not in NAMELESS else "")


def describe_crs(crs) -> str:
    if crs is None:
        return "none"
    pcrs = to_pyproj(crs)
    epsg = pcrs.to_epsg()
    return f"EPSG:{epsg} ({pcrs.name})" if epsg else f"{crs_label(pcrs)} (no EPSG code)"


def to_pyproj(crs):
    """A rasterio/pyproj CRS or user input ('EPSG:4326', WKT, PROJ string) as a pyproj.CRS."""
    import pyproj

    if crs is None:
        return None
    if isinstance(crs, pyproj.CRS):
        return crs
    if hasattr(crs, "to_wkt"):
        return pyproj.CRS.from_wkt(crs.to_wkt())
    try:
        return pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise GeoError(f"not a CRS: {crs!r} ({exc}); give e.g. 'EPSG:32633', a WKT string or a PROJ string") from exc


def resolve_georef(ds, crs=None, pixel_space: bool = False):
    """(pyproj CRS or None, affine transform from global pixel (col, row) to output coordinates).

    A raster without a CRS is an error unless ``crs`` assigns one or ``pixel_space`` asks for
    polygons in pixel coordinates (x = column, y = row, CRS none).
    """
    has_geotransform = ds.transform != Affine.identity()
    gcps, _ = ds.gcps
    if pixel_space:
        return None, Affine.identity()
    if crs is not None:
        if not has_geotransform:
            raise GeoError(
                f"{ds.name} has no geotransform, so assigning crs={crs!r} does not place it on the map;"
                " georeference it first (gdalwarp or gdal_translate -a_ullr) or use pixel_space=True (--pixel-space)"
            )
        assigned = to_pyproj(crs)
        if ds.crs is not None and to_pyproj(ds.crs) != assigned:
            # the coordinates stay those of the raster's own CRS: relabelling them would put every
            # polygon in the wrong place without a warning
            raise GeoError(
                f"{ds.name} already has a CRS ({describe_crs(ds.crs)}); crs={crs!r} (--crs) only assigns one to a "
                "raster without; to get polygons in another CRS use to_crs (--to-crs)"
            )
        return assigned, ds.transform
    if ds.crs is None or not has_geotransform:
        if gcps:
            raise GeoError(
                f"{ds.name} is georeferenced only by ground control points; warp it to a CRS first"
                " (gdalwarp -t_srs EPSG:xxxx in.tif out.tif) or use pixel_space=True (--pixel-space)"
            )
        raise GeoError(
            f"{ds.name} has no CRS, so polygons cannot be placed on the map; assign one with"
            " crs='EPSG:xxxx' (CLI --crs EPSG:xxxx) or write pixel coordinates with pixel_space=True"
            " (CLI --pixel-space)"
        )
    return to_pyproj(ds.crs), ds.transform


def default_bands(ds) -> tuple[int, ...]:
    """RGB bands by colour interpretation, else the first three non-alpha bands, else band 1."""
    ci = list(ds.colorinterp)
    non_alpha = [i + 1 for i, c in enumerate(ci) if c != ColorInterp.alpha]
    rgb = [ci.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if c in ci]
    if len(rgb) == 3:
        return tuple(rgb)
    if len(non_alpha) >= 3:
        return tuple(non_alpha[:3])
    return (non_alpha[0] if non_alpha else 1,)


def check_bands(ds, bands) -> tuple[int, ...]:
    if bands is None:
        return default_bands(ds)
    if isinstance(bands, int):
        bands = (bands,)
    if isinstance(bands, str):
        try:
            # commas or spaces: "3,2,1", "3, 2, 1" and "3 2 1" are the same bands
            bands = tuple(int(b) for b in bands.replace(",", " ").split())
        except ValueError:
            raise GeoError(f"bands must be 1-based band numbers like '3,2,1', got {bands!r}") from None
    bands = tuple(int(b) for b in bands)
    if len(bands) not in (1, 3):
        raise GeoError(f"give 1 band (repeated as grey) or 3 bands (as R,G,B), got {len(bands)}: {bands}")
    bad = [b for b in bands if not 1 <= b <= ds.count]
    if bad:
        raise GeoError(f"band(s) {bad} do not exist: {ds.name} has bands 1..{ds.count} (bands are 1-based)")
    return bands


def nodata_source(ds) -> str:
    """How the raster marks nodata: 'alpha', 'mask', 'value', or 'none'."""
    flags = set(ds.mask_flag_enums[0])
    if MaskFlags.alpha in flags:
        return "alpha"
    if MaskFlags.per_dataset in flags:
        return "mask"
    if MaskFlags.nodata in flags:
        return "value"
    return "none"


@dataclass(frozen=True)
class RasterSpec:
    """All a worker needs to read a tile exactly as the main process would (picklable)."""

    path: str
    bands: tuple[int, ...]
    nodata: float | None = None  #: overrides the raster's own nodata value when not None
    stretch: tuple[tuple[float, float], ...] | None = None  #: (lo, hi) per band; None: no stretch
    width: int = 0
    height: int = 0
    open_options: dict = field(default_factory=dict, compare=False, hash=False)


#: how GDAL names rasters it reads over a network
REMOTE_PREFIXES = ("http://", "https://", "ftp://", "s3://", "gs://", "az://", "/vsicurl", "/vsis3", "/vsigs",
                   "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift", "/vsihdfs", "/vsiwebhdfs")


def is_remote(name: str) -> bool:
    """Whether GDAL reads the raster called ``name`` over a network."""
    return str(name).lower().startswith(REMOTE_PREFIXES)


def damaged_pixels_are_errors(read):
    """A reader of ``ds`` whose GDAL read failure becomes one error naming the file, instead of
    a rasterio traceback mid-run: for a local file a GeoError (truncated or damaged, though its
    header is fine), for one read over a network a RemoteReadError (the network or the server
    failed, most likely: a re-run resumes)."""

    @functools.wraps(read)
    def checked(ds, *args, **kwargs):
        try:
            return read(ds, *args, **kwargs)
        except rasterio.errors.RasterioIOError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if is_remote(ds.name):
                raise RemoteReadError(
                    f"{ds.name}: could not fetch its pixels over the network ({reason}); the tiles finished "
                    "so far are kept: run the same command again to resume when the server answers"
                ) from None
            raise GeoError(f"{ds.name}: could not read its pixels ({reason}); the file is damaged or truncated "
                           "(gdalinfo -checksum shows which blocks)") from None

    return checked


@damaged_pixels_are_errors
def read_valid(ds, spec: RasterSpec, window: Window, out_shape=None) -> np.ndarray:
    """Boolean HxW: True where at least one selected band has data (GDAL's dataset-mask rule)."""
    bands = list(dict.fromkeys(spec.bands))
    shape = None if out_shape is None else (len(bands), *out_shape)
    if spec.nodata is None:
        masks = ds.read_masks(bands, window=window, out_shape=shape, resampling=Resampling.nearest)
        return np.any(masks > 0, axis=0)
    # An explicit nodata value replaces the raster's value; alpha/mask bands still count.
    data = ds.read(bands, window=window, out_shape=shape, resampling=Resampling.nearest)
    valid = np.any(_value_valid(data, spec.nodata), axis=0)
    if nodata_source(ds) in ("alpha", "mask"):
        masks = ds.read_masks(bands[:1], window=window, out_shape=None if shape is None else (1, *out_shape))
        valid &= masks[0] > 0
    return valid


def check_nodata(ds, nodata: float | None) -> None:
    """A nodata value given for ``ds`` must be one its pixels can hold: cast to an integer type,
    -1 would become 255 on uint8 and mask real data."""
    if nodata is None:
        return
    for dtype in sorted(set(ds.dtypes)):
        if not np.issubdtype(np.dtype(dtype), np.integer):
            continue
        if math.isnan(nodata):
            raise GeoError(f"nodata NaN cannot occur in {ds.name}'s {dtype} pixels; give an integer value")
        info = np.iinfo(dtype)
        if nodata != int(nodata) or not info.min <= nodata <= info.max:
            raise GeoError(f"nodata {nodata:g} cannot occur in {ds.name}'s {dtype} pixels "
                           f"(whole numbers {info.min}..{info.max})")


def _value_valid(data: np.ndarray, nodata) -> np.ndarray:
    valid = np.ones(data.shape, bool)
    if data.dtype.kind == "f":
        valid &= np.isfinite(data)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= data != np.asarray(nodata).astype(data.dtype)
    return valid


@damaged_pixels_are_errors
def read_tile(ds, spec: RasterSpec, window: Window, out_shape=None, valid=None):
    """(HxWx3 uint8 RGB with the global stretch applied and nodata black, HxW bool valid mask)."""
    if valid is None:
        valid = read_valid(ds, spec, window, out_shape)
    bands = list(dict.fromkeys(spec.bands))
    shape = None if out_shape is None else (len(bands), *out_shape)
    data = ds.read(bands, window=window, out_shape=shape, resampling=Resampling.nearest)
    if data.dtype.kind == "f":
        valid = valid & np.any(np.isfinite(data), axis=0)
    planes = []
    for b in spec.bands:
        i = bands.index(b)
        lohi = None if spec.stretch is None else spec.stretch[list(spec.bands).index(b)]
        planes.append(apply_stretch(data[i], lohi))
    if len(planes) == 1:
        planes = planes * 3
    rgb = np.stack(planes, axis=-1)
    rgb[~valid] = 0
    return np.ascontiguousarray(rgb), valid


def apply_stretch(plane: np.ndarray, lohi) -> np.ndarray:
    """Map one band to uint8: linear from (lo, hi) to (0, 255); without lo/hi uint8 passes through."""
    if lohi is None:
        if plane.dtype == np.uint8:
            return plane
        return np.clip(np.nan_to_num(plane.astype(np.float32)), 0, 255).round().astype(np.uint8)
    lo, hi = lohi
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # nodata like -3.4e38 overflows; it is masked anyway
        out = (plane.astype(np.float32) - np.float32(lo)) * np.float32(scale)
        out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(out, 0, 255).round().astype(np.uint8)


@damaged_pixels_are_errors
def sample_values(ds, spec: RasterSpec, max_pixels: int | None = None) -> np.ndarray:
    """A (bands, N) sample of valid pixel values of the selected bands, from the whole raster.

    From the overviews when the raster has them (one decimated read GDAL answers from the
    nearest overview); for a raster of moderate size without overviews from one decimated
    read (GDAL streams the blocks, memory stays bounded); for a huge raster without overviews
    from a regular grid of small full-resolution windows.
    """
    max_pixels = max_pixels or STRETCH_SAMPLE_PIXELS
    bands = list(spec.bands)
    w, h = ds.width, ds.height
    has_overviews = bool(ds.overviews(bands[0]))
    if w * h <= max_pixels or has_overviews or w * h <= DECIMATED_READ_MAX_PIXELS:
        f = min(1.0, math.sqrt(max_pixels / float(w * h)))
        shape = (max(1, int(h * f)), max(1, int(w * f)))  # within the budget
        windows = [(Window(0, 0, w, h), shape)]
    else:
        n = 24
        size = max(8, int(math.sqrt(max_pixels / (n * n))))
        windows = []
        for i in range(n):
            for j in range(n):
                r = int((i + 0.5) * h / n - size / 2)
                c = int((j + 0.5) * w / n - size / 2)
                windows.append((Window(max(0, c), max(0, r), min(size, w), min(size, h)), None))
    out = []
    for win, shape in windows:
        valid = read_valid(ds, spec, win, shape)
        data = ds.read(bands, window=win, out_shape=None if shape is None else (len(bands), *shape),
                       resampling=Resampling.nearest)
        ok = valid & np.all(_value_valid(data, None), axis=0)
        out.append(data[:, ok].astype(np.float64))
    return np.concatenate(out, axis=1) if out else np.zeros((len(bands), 0))


def compute_stretch(ds, spec: RasterSpec, stretch="auto") -> tuple[tuple[float, float], ...] | None:
    """The one global stretch applied to every tile: (lo, hi) per selected band, or None.

    ``stretch``: ``"auto"`` (uint8 rasters pass through, others 2-98 percentile), ``"none"``,
    ``"minmax"``, ``(p_low, p_high)`` percentiles (a pair within 0..100), or explicit values
    ``[(lo, hi)]`` (a list: one pair for all bands, or one pair per band; a bare pair outside
    0..100 is values too). Nodata never enters the statistics.
    """
    if stretch is None or (isinstance(stretch, str) and stretch.lower() == "none"):
        return None
    nb = len(spec.bands)
    if isinstance(stretch, str):
        s = stretch.lower()
        if s == "auto":
            if all(ds.dtypes[b - 1] == "uint8" for b in spec.bands):
                return None
            pct = (2.0, 98.0)
        elif s == "minmax":
            pct = (0.0, 100.0)
        else:
            try:
                pct = tuple(float(v) for v in s.split(","))
            except ValueError:
                raise GeoError(
                    f"stretch must be auto, none, minmax or 'P_LOW,P_HIGH' percentiles, got {stretch!r}"
                ) from None
            if len(pct) != 2:
                raise GeoError(f"stretch percentiles need two numbers like '2,98', got {stretch!r}")
    else:
        arr = np.asarray(stretch, dtype=float)
        if arr.shape == (2,) and not _looks_like_values(arr):
            pct = tuple(arr)
        elif arr.shape in ((2,), (1, 2)):  # one (lo, hi) for every band
            lo, hi = (float(v) for v in arr.ravel())
            return tuple((lo, hi) for _ in range(nb))
        elif arr.shape == (nb, 2):
            return tuple((float(a), float(b)) for a, b in arr)
        else:
            raise GeoError(f"stretch values must be (lo, hi) or one (lo, hi) per band ({nb}), got {stretch!r}")
    if not (0 <= pct[0] < pct[1] <= 100):
        raise GeoError(f"stretch percentiles must satisfy 0 <= low < high <= 100, got {pct}")
    sample = sample_values(ds, spec)
    if sample.shape[1] == 0:
        raise GeoError(
            f"{ds.name}: no valid pixels found in the sample for the stretch (is the raster all nodata?"
            " check --nodata / the bands)"
        )
    out = []
    for i in range(nb):
        lo, hi = np.percentile(sample[i], pct)
        if not hi > lo:
            hi = lo + 1.0
        out.append((float(lo), float(hi)))
    return tuple(out)


def _looks_like_values(arr) -> bool:
    """A plain pair is percentiles if both lie in [0, 100]; anything else is explicit values."""
    return not (0 <= arr[0] <= 100 and 0 <= arr[1] <= 100)


def prepare(src, *, bands=None, nodata=None, stretch="auto", crs=None, pixel_space=False):
    """Open ``src`` and settle everything global: returns (dataset, RasterSpec, crs, transform)."""
    ds = open_raster(src)
    try:
        out_crs, transform = resolve_georef(ds, crs=crs, pixel_space=pixel_space)
        sel = check_bands(ds, bands)
        spec = RasterSpec(path=ds.name, bands=sel, nodata=None if nodata is None else float(nodata),
                          width=ds.width, height=ds.height)
        check_nodata(ds, spec.nodata)
        values = compute_stretch(ds, spec, stretch)
        spec = RasterSpec(path=ds.name, bands=sel, nodata=spec.nodata, stretch=values,
                          width=ds.width, height=ds.height)
    except BaseException:
        if ds is not src:
            ds.close()
        raise
    return ds, spec, out_crs, transform
