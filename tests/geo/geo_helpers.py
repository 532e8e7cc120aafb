"""Helpers for the GIS tests: label rasters on real grids, reference regions, polygon matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import geopandas as gpd
import rasterio
import shapely
from rasterio.features import rasterize, shapes
from shapely.geometry import shape

KAMPALA = "fair_oam_kampala_z21_x1238424_y1046544_4x4tiles.tif"
KAMPALA_LABELS = "fair_oam_kampala_labels.geojson"
ATLANTA = "solaris__sample_geotiff.tif"
ATLANTA_LABELS = "solaris__geotiff_labels.geojson"

ALL_RASTERS = [
    "rasterio__RGB.byte.tif",
    "rasterio__shade.tif",
    "rasterio__float_raster_with_nodata.tif",
    "solaris__sample_geotiff.tif",
    "opengeos_data__elevation_hag.tif",
    "solaris__sample_geotiff_custom_proj.tif",
    "ftw__inference-img.tif",
    "riotiler__pix4d_alpha_nodata.tif",
    "opengeos_data__naip_m_4709963_se_14_1_20200831.tif",
    "geoapi__SP27GTIF.tiff",
    KAMPALA,
]


def codes_to_rgb(codes: np.ndarray) -> np.ndarray:
    codes = codes.astype(np.uint32)
    return np.stack([codes & 255, (codes >> 8) & 255, (codes >> 16) & 255]).astype(np.uint8)


def write_rgb(path, rgb: np.ndarray, *, crs, transform, extra_profile=None, alpha=None) -> Path:
    """A tiled, compressed RGB(A) GeoTIFF."""
    count = 3 if alpha is None else 4
    profile = dict(driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=count, dtype="uint8",
                   crs=crs, transform=transform, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                   photometric="RGB")
    if alpha is not None:
        profile["alpha"] = "YES"
    profile.update(extra_profile or {})
    with rasterio.open(path, "w", **profile) as out:
        out.write(rgb, [1, 2, 3])
        if alpha is not None:
            out.write(alpha, 4)
            out.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                               rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
    return Path(path)


def label_raster_from_footprints(geo_dir: Path, raster: str, labels: str, out: Path):
    """Rasterise real footprints as distinct colours onto a real raster's grid and CRS.

    Returns (label raster path, code image, transform, crs, footprints in the raster CRS with
    their ``code``)."""
    with rasterio.open(geo_dir / raster) as ds:
        transform, crs, h, w = ds.transform, ds.crs, ds.height, ds.width
    fp = gpd.read_file(geo_dir / labels).to_crs(crs.to_wkt())
    fp["geometry"] = fp.geometry.make_valid()
    fp = fp[~fp.geometry.is_empty].reset_index(drop=True)
    # distinct colours far apart in RGB, so that a wrong band order or stretch would show
    fp["code"] = [int((k + 1) * 2654435761 % (1 << 24)) or 1 for k in range(len(fp))]
    img = rasterize(zip(fp.geometry, fp["code"]), out_shape=(h, w), transform=transform, dtype="uint32")
    write_rgb(out, codes_to_rgb(img), crs=crs, transform=transform)
    return out, img, transform, crs, fp


def reference_regions(codes: np.ndarray, transform):
    """Every 4-connected region of one non-zero code, traced independently of samkit.geo."""
    return [(shape(g), int(v)) for g, v in
            shapes(codes.astype(np.int32), mask=codes > 0, connectivity=4, transform=transform)]


def match_polygons(outputs, references):
    """For each reference, the best IoU of any output; for each output, how many references it
    matches with IoU > 0.5. Returns (ious per reference, matches per output)."""
    outs = list(outputs)
    tree = shapely.STRtree(outs)
    ious, per_out = [], np.zeros(len(outs), int)
    for ref in references:
        best, best_k = 0.0, None
        for k in tree.query(ref):
            o = outs[k]
            inter = o.intersection(ref).area
            iou = inter / (o.area + ref.area - inter)
            if iou > best:
                best, best_k = iou, k
        ious.append(best)
        if best_k is not None and best > 0.5:
            per_out[best_k] += 1
    return np.array(ious), per_out


def synthetic_raster(path, codes: np.ndarray, *, crs="EPSG:32633", origin=(500000.0, 5000000.0), res=0.5,
                     alpha=None):
    from affine import Affine

    transform = Affine(res, 0, origin[0], 0, -res, origin[1])
    write_rgb(path, codes_to_rgb(codes), crs=crs, transform=transform, alpha=alpha)
    return Path(path), transform


class FloodPredictor:
    """A stand-in for ``samkit.Predictor`` whose answer is known exactly: the 4-connected region of
    one colour under the first positive point (or, for a box alone, the region with most pixels
    inside the box). Returns logits (+10 inside, -10 outside) and records every call."""

    def __init__(self):
        self.images = []
        self.calls = []

    def set_image(self, image):
        from samkit.geo.testing import colour_codes

        self.codes = colour_codes(image)
        self.images.append(image.shape)

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True,
                return_logits=False, mask_input=None):
        import cv2

        self.calls.append({"points": None if point_coords is None else np.array(point_coords),
                           "labels": None if point_labels is None else np.array(point_labels),
                           "box": None if box is None else np.array(box), "multimask": multimask_output,
                           "shape": self.codes.shape})
        h, w = self.codes.shape
        if point_coords is not None and (np.asarray(point_labels) == 1).any():
            x, y = np.asarray(point_coords)[np.asarray(point_labels) == 1][0]
            r, c = min(int(y), h - 1), min(int(x), w - 1)
        else:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            sub = self.codes[y0:y1, x0:x1]
            vals, counts = np.unique(sub[sub > 0], return_counts=True)
            code = vals[np.argmax(counts)]
            rr, cc = np.nonzero(sub == code)
            r, c = y0 + rr[0], x0 + cc[0]
        same = (self.codes == self.codes[r, c]).astype(np.uint8)
        _, labels = cv2.connectedComponents(same, connectivity=4)
        mask = labels == labels[r, c]
        n = 3 if multimask_output else 1
        masks = np.stack([mask] * n)
        logits = np.where(masks, 10.0, -10.0).astype(np.float32)
        scores = np.linspace(0.9, 0.7, n).astype(np.float32)
        low = np.zeros((n, 256, 256), np.float32)
        return (logits if return_logits else masks), scores, low


def write_truncated_raster(path: Path, scratch: Path) -> Path:
    """A 512x512 tiled GeoTIFF of random pixels cut off halfway: its header reads, its later pixel
    blocks do not. `scratch` is a folder for the whole file it is cut from."""
    from affine import Affine

    rng = np.random.default_rng(0)
    whole = scratch / "whole.tif"
    profile = dict(driver="GTiff", width=512, height=512, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(0.5, 0, 500000, 0, -0.5, 5000000), tiled=True, blockxsize=128,
                   blockysize=128, compress="deflate")
    with rasterio.open(whole, "w", **profile) as dst:
        dst.write(rng.integers(0, 255, (3, 512, 512), dtype=np.uint8))
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
