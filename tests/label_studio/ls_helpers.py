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
