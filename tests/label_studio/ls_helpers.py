"""Helpers shared by the Label Studio tests: the test labeling config, decoding regions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def samkit_command() -> list[str]:
    """The `samkit` console script of this environment (core CLI; adapters add sub-commands)."""
    return [str(Path(sys.executable).with_name("samkit"))]


CONFIG_ALL = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="brush" toName="image">
    <Label value="Object" background="#FF0000"/>
    <Label value="Dog" background="#AA00FF"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image">
    <Label value="Object" background="#00FF00"/>
    <Label value="Dog" background="#00AAFF"/>
  </PolygonLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Object" smart="true" background="#FFaa00"/>
    <Label value="Dog" smart="true" background="#FF00AA"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="Object" background="#00aaFF"/>
    <Label value="Dog" background="#AAFF00"/>
  </RectangleLabels>
</View>"""


# -- decoding what the backend returns ---------------------------------------------------------
def brush_mask(region: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0


def polygon_mask(regions: list[dict]) -> np.ndarray:
    import cv2

    h, w = regions[0]["original_height"], regions[0]["original_width"]
    out = np.zeros((h, w), np.uint8)
    for r in regions:
        pts = np.array(r["value"]["points"], dtype=np.float64)
        px = np.stack([pts[:, 0] / 100 * w - 0.5, pts[:, 1] / 100 * h - 0.5], axis=1)
        cv2.fillPoly(out, [np.round(px).astype(np.int32)], 1)
    return out.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def holes(mask: np.ndarray, min_area: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of the mask's holes of at least min_area pixels, pixels of its smaller holes): the
    background that cannot reach the image border (4-connected, as OpenCV's contours see it)."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    hole = np.ones(count, bool)
    hole[0] = False
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        hole[edge] = False
    big = hole & (stats[:, cv2.CC_STAT_AREA] >= min_area)
    return big[labels], (hole & ~big)[labels]


def near_boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels on either side of the mask's outline (within `width` pixels of a pixel of the other
    kind, or of the image's edge: an outline runs along it there)."""
    import cv2

    m, k = mask.astype(np.uint8), np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return cv2.dilate(m, k) != cv2.erode(m, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def small_parts(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Pixels of the mask's parts whose outline encloses less than min_area pixels (polygon output
    leaves them out); its holes under min_area count as part of the mask."""
    import cv2

    count, parts = cv2.connectedComponents((mask | holes(mask, min_area)[1]).astype(np.uint8), connectivity=8)
    out = np.zeros(mask.shape, bool)
    for i in range(1, count):
        outline = cv2.findContours((parts == i).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0][0]
        if cv2.contourArea(outline) < min_area:
            out |= parts == i
    return out
