"""A segmenter whose output is known exactly, for testing pipelines built on ``samkit.geo``.

``LabelSegmenter`` reads its input as a *label image*: every distinct colour is one class, and
every 4-connected region of one colour is one object (4-connectivity, the same rule
``rasterio.features.shapes`` traces with). It returns records in the ``samkit.MaskGenerator``
format, so it can stand in for the model wherever a generator is accepted::

    from samkit.geo.testing import LabelSegmenter
    samkit.geo.vectorize("labels.tif", "objects.gpkg", generator=LabelSegmenter())

Rasterise known polygons as distinct colours, vectorise them through the real tiling, merging
and tracing, and every output polygon must equal its input region.
"""

from __future__ import annotations

import numpy as np


def colour_codes(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW uint32 code r + 256 g + 65536 b."""
    img = np.asarray(image)
    if img.ndim == 2:
        return img.astype(np.uint32)
    return (img[..., 0].astype(np.uint32) | (img[..., 1].astype(np.uint32) << 8)
            | (img[..., 2].astype(np.uint32) << 16))


def code_colour(code: int) -> tuple[int, int, int]:
    return code & 255, (code >> 8) & 255, (code >> 16) & 255


class LabelSegmenter:
    """Connected regions of each distinct colour of a label image, as MaskGenerator records.

    - ``background``: colour codes that are not objects (default black, code 0).
    - ``min_area``: regions with fewer pixels are dropped (default 1: keep all).
    - ``predicted_iou`` of a region is ``score_of(code)``, default 1.0; ``stability_score`` 1.0.
    - ``calls`` counts ``generate`` calls (handy to test resuming and tile skipping).
    """

    def __init__(self, background=(0,), min_area: int = 1, score_of=None):
        self.background = tuple(int(b) for b in background)
        self.min_area = int(min_area)
        self.score_of = score_of
        self.calls = 0

    def generate(self, image: np.ndarray) -> list[dict]:
        import cv2

        self.calls += 1
        codes = colour_codes(image)
        h, w = codes.shape
        flat = codes.ravel()
        if len(self.background) == 1:
            fg = np.flatnonzero(flat != self.background[0])
        else:
            fg = np.flatnonzero(~np.isin(flat, np.asarray(self.background, np.uint32)))
        order = fg[np.argsort(flat[fg], kind="stable")]
        values, starts = np.unique(flat[order], return_index=True)
        ends = np.append(starts[1:], order.size)
        records = []
        for value, s, e in zip(values, starts, ends):
            if int(value) in self.background:
                continue
            idx = order[s:e]
            rows, cols = idx // w, idx % w
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            sub = (codes[r0:r1, c0:c1] == value).astype(np.uint8)
            n, labels, stats, _ = cv2.connectedComponentsWithStats(sub, connectivity=4)
            for k in range(1, n):
                area = int(stats[k, cv2.CC_STAT_AREA])
                if area < self.min_area:
                    continue
                seg = np.zeros((h, w), bool)
                seg[r0:r1, c0:c1] = labels == k
                x, y = int(c0 + stats[k, cv2.CC_STAT_LEFT]), int(r0 + stats[k, cv2.CC_STAT_TOP])
                bw, bh = int(stats[k, cv2.CC_STAT_WIDTH]), int(stats[k, cv2.CC_STAT_HEIGHT])
                records.append({
                    "segmentation": seg,
                    "area": area,
                    "bbox": [x, y, bw, bh],
                    "predicted_iou": float(self.score_of(int(value))) if self.score_of else 1.0,
                    "point_coords": [[x + bw / 2.0, y + bh / 2.0]],
                    "stability_score": 1.0,
                    "crop_box": [0, 0, w, h],
                })
        return records
