"""Per-tile work: read a window, segment it, keep each mask as a small piece cropped to its box.

A *piece* is one mask of one tile, clipped to the raster's valid (non-nodata) pixels and cropped
to its bounding box, with its box in global pixel coordinates. A tile's pieces are stored as
bit-packed arrays, which is also the checkpoint format (one ``.npz`` per tile).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from samkit.utils.files import atomic_output
from samkit.utils.mask_utils import crop_to_box

from .errors import GeoError
from .raster import RasterSpec, gdal_env, open_raster, read_tile, read_valid
from .tiling import Tile

FORMAT_VERSION = 1


@dataclass
class TileResult:
    """What one tile produced. ``status`` is 'done' or 'nodata' (all nodata: not segmented)."""

    row: int
    col: int
    status: str
    boxes: np.ndarray  # (N, 4) int64: r0, c0, r1, c1 in global pixels (half-open)
    scores: np.ndarray  # (N,) float32 predicted IoU
    stability: np.ndarray  # (N,) float32
    packed: np.ndarray  # uint8: all masks' bits, concatenated
    offsets: np.ndarray  # (N + 1,) int64 into ``packed``
    # (N,) int64: the class each piece was found as (a text prompt's phrase index), -1 for none
    # (segment everything); None: none for all
    classes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.classes is None:
            self.classes = np.full(len(self.boxes), -1, np.int64)

    @property
    def key(self) -> str:
        return f"r{self.row}c{self.col}"

    def __len__(self) -> int:
        return len(self.boxes)

    def mask(self, i: int) -> np.ndarray:
        r0, c0, r1, c1 = (int(v) for v in self.boxes[i])
        n = (r1 - r0) * (c1 - c0)
        bits = np.unpackbits(self.packed[self.offsets[i]:self.offsets[i + 1]], count=n)
        return bits.reshape(r1 - r0, c1 - c0).view(bool)

    @classmethod
    def empty(cls, tile: Tile, status: str) -> "TileResult":
        return cls(tile.row, tile.col, status, np.zeros((0, 4), np.int64), np.zeros(0, np.float32),
                   np.zeros(0, np.float32), np.zeros(0, np.uint8), np.zeros(1, np.int64))

    @classmethod
    def from_masks(cls, tile: Tile, items) -> "TileResult":
        """``items``: iterable of (cropped bool mask, (r0, c0) global origin, score, stability[,
        class id])."""
        boxes, scores, stab, chunks, classes = [], [], [], [], []
        offsets = [0]
        for mask, (r0, c0), score, stability, *class_id in items:
            classes.append(class_id[0] if class_id else -1)
            boxes.append((r0, c0, r0 + mask.shape[0], c0 + mask.shape[1]))
            scores.append(score)
            stab.append(stability)
            packed = np.packbits(mask.ravel())
            chunks.append(packed)
            offsets.append(offsets[-1] + packed.size)
        if not boxes:
            return cls.empty(tile, "done")
        return cls(tile.row, tile.col, "done", np.asarray(boxes, np.int64), np.asarray(scores, np.float32),
                   np.asarray(stab, np.float32), np.concatenate(chunks), np.asarray(offsets, np.int64),
                   np.asarray(classes, np.int64))

    # -- checkpoint files ---------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write atomically: a crash leaves either the old file, no file, or the complete one."""
        with atomic_output(path, durable=True) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, version=FORMAT_VERSION, rowcol=np.array([self.row, self.col]),
                     status=np.array(self.status), boxes=self.boxes, scores=self.scores,
                     stability=self.stability, packed=self.packed, offsets=self.offsets, classes=self.classes)

    @classmethod
    def load(cls, path: str) -> "TileResult":
        with np.load(path) as z:
            if int(z["version"]) != FORMAT_VERSION:
                raise ValueError("checkpoint format changed")
            row, col = (int(v) for v in z["rowcol"])
            return cls(row, col, str(z["status"]), z["boxes"], z["scores"], z["stability"], z["packed"],
                       z["offsets"], z["classes"] if "classes" in z.files else None)


def record_mask(record, shape) -> np.ndarray:
    seg = record["segmentation"]
    if isinstance(seg, dict):  # COCO RLE (output_mode coco_rle / uncompressed_rle)
        from pycocotools import mask as mask_utils

        rle = dict(seg)
        if isinstance(rle.get("counts"), list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        seg = mask_utils.decode(rle)
    seg = np.asarray(seg)
    if seg.shape != tuple(shape):
        raise GeoError(
            f"the generator returned a mask of shape {seg.shape} for a tile of shape {tuple(shape)};"
            " generate(image) must return masks of the image's size"
        )
    return seg.astype(bool, copy=False)


def _crop_hint(rec, shape):
    """The record's bbox (XYWH) grown by 2 px, if it holds the whole mask (checked against
    ``area``); SAM-style boxes may be one pixel short, hence the margin."""
    bbox, area = rec.get("bbox"), rec.get("area")
    if bbox is None or area is None or isinstance(rec["segmentation"], dict):
        return None
    h, w = shape
    x, y, bw, bh = (int(round(float(v))) for v in bbox)
    r0, c0 = max(0, y - 2), max(0, x - 2)
    r1, c1 = min(h, y + bh + 3), min(w, x + bw + 3)
    if r1 <= r0 or c1 <= c0:
        return None
    return r0, c0, r1, c1, int(area)


def pieces_from_records(tile: Tile, records, valid: np.ndarray):
    """Clip each record's mask to valid pixels and crop it to its box (global coordinates).

    The record's bbox is used to avoid scanning full-size masks when it provably holds the
    whole mask (the mask's pixel count inside it equals the record's ``area``)."""
    for rec in records:
        hint = _crop_hint(rec, valid.shape)
        mask = None
        if hint is not None:
            hr0, hc0, hr1, hc1, area = hint
            seg = np.asarray(rec["segmentation"])
            if seg.shape != valid.shape:
                record_mask(rec, valid.shape)  # raises the clear error
            sub = seg[hr0:hr1, hc0:hc1].astype(bool, copy=False)
            if int(np.count_nonzero(sub)) == area:
                mask, off_r, off_c = sub & valid[hr0:hr1, hc0:hc1], hr0, hc0
        if mask is None:
            mask, off_r, off_c = record_mask(rec, valid.shape) & valid, 0, 0
        found = crop_to_box(mask)
        if found is None:
            continue
        box, crop = found
        score = float(rec.get("predicted_iou", 1.0))
        stability = float(rec.get("stability_score", 1.0))
        class_id = int(rec.get("class_id", -1))  # a detector's class (text prompts: the phrase)
        yield crop, (tile.r0 + off_r + box.y0, tile.c0 + off_c + box.x0), score, stability, class_id


_local = threading.local()


def _dataset(path: str):
    """One open dataset per thread and file version (rasterio datasets are not thread-safe; a
    file rewritten in place is reopened): a Dask worker's, kept for its later tiles."""
    cache = getattr(_local, "datasets", None)
    if cache is None:
        cache = _local.datasets = {}
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
    except OSError:  # URLs, /vsi paths
        key = (path, None, None)
    ds = cache.get(key)
    if ds is None or ds.closed:
        for old in [k for k in cache if k[0] == path]:
            cache.pop(old).close()
        ds = cache[key] = open_raster(path)
    return ds


def read_tile_pixels(spec: RasterSpec, tile: Tile, ds=None) -> tuple[np.ndarray, np.ndarray] | None:
    """A tile's image (HxWx3 uint8) and valid-pixel mask, or None when it is all nodata (then
    only its mask is read). ``ds``: an open dataset of ``spec.path`` that no other thread uses
    meanwhile; by default this thread's own."""
    with gdal_env():
        if ds is None:
            ds = _dataset(spec.path)
        valid = read_valid(ds, spec, tile.window)
        if not valid.any():
            return None
        return read_tile(ds, spec, tile.window, valid=valid)


def segment_tile(tile: Tile, pixels: tuple[np.ndarray, np.ndarray] | None, generator) -> TileResult:
    """Segment a tile's pixels (from read_tile_pixels; None: an all-nodata tile, not segmented).

    ``generator`` is anything with ``generate(image) -> records`` or a ``GeneratorSpec`` (built
    once per process)."""
    from .generators import resolve

    if pixels is None:
        return TileResult.empty(tile, "nodata")
    image, valid = pixels
    records = resolve(generator).generate(image)
    return TileResult.from_masks(tile, pieces_from_records(tile, records, valid))


def process_tile(spec: RasterSpec, tile: Tile, generator) -> TileResult:
    """Read and segment one tile. Runs on a Dask worker."""
    return segment_tile(tile, read_tile_pixels(spec, tile), generator)
