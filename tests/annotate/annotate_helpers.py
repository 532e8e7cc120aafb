"""Helpers of the auto-annotation tests (also imported by tests/label_studio and tests/fiftyone):
real inputs (footprints of the Kampala scene, hand boxes on the shared photos) and reading
outputs back (YOLO polygons rasterised, IoU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np

KAMPALA = "fair_oam_kampala_z21_x1238424_y1046544_4x4tiles.tif"
KAMPALA_LABELS = "fair_oam_kampala_labels.geojson"

# Hand-drawn pixel boxes [x0, y0, x1, y1] around objects of the shared photos, with COCO's
# category ids (person 1, bus 6, dog 18).
PHOTO_BOXES = {
    "dog.jpg": [(18, [64, 53, 504, 507])],
    "dogs.jpg": [(18, [32, 30, 514, 590]), (18, [536, 60, 1040, 590])],
    "bus.jpg": [(6, [0, 216, 810, 810]), (1, [40, 432, 243, 972])],
}
COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 6, "name": "bus"}, {"id": 18, "name": "dog"}]


def footprint_boxes(geo_dir: Path, count: int = 8) -> tuple[np.ndarray, list[list[float]]]:
    """The Kampala aerial scene (HxWx3 uint8) and pixel boxes of its `count` largest OpenStreetMap
    building footprints lying wholly inside it."""
    import geopandas as gpd
    import rasterio

    with rasterio.open(geo_dir / KAMPALA) as src:
        rgb = np.ascontiguousarray(src.read([1, 2, 3]).transpose(1, 2, 0))
        inverse, crs, width, height = ~src.transform, src.crs, src.width, src.height
    bounds = gpd.read_file(geo_dir / KAMPALA_LABELS).to_crs(crs).geometry.bounds
    x0, y0 = inverse * (bounds.minx.values, bounds.maxy.values)
    x1, y1 = inverse * (bounds.maxx.values, bounds.miny.values)
    inside = (x0 >= 0) & (y0 >= 0) & (x1 <= width) & (y1 <= height)
    boxes = np.stack([x0, y0, x1, y1], axis=1)[inside]
    largest = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")[:count]
    return rgb, boxes[largest].tolist()


def write_yolo_boxes(path: Path, boxes, width: int, height: int, class_id: int = 0) -> None:
    lines = []
    for x0, y0, x1, y1 in boxes:
        cx, cy, w, h = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height
        lines.append(f"{class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    path.write_text("".join(lines))


def photo_dataset(images_dir: Path, folder: Path, names=("dog.jpg", "dogs.jpg", "bus.jpg")) -> tuple[Path, Path]:
    """A folder with copies of the shared photos `names` and a COCO JSON of their hand boxes:
    (images folder, boxes JSON)."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    doc = {"images": [], "annotations": [], "categories": COCO_CATEGORIES}
    for image_id, name in enumerate(names, 1):
        shutil.copy(images_dir / name, images / name)
        width, height = Image.open(images / name).size
        doc["images"].append({"id": image_id, "file_name": f"photos/{name}", "width": width, "height": height})
        for category, (x0, y0, x1, y1) in PHOTO_BOXES.get(name, []):
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id,
                                       "category_id": category, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                       "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    boxes = folder / "boxes.json"
    boxes.write_text(json.dumps(doc))
    return images, boxes


def photo_boxes(name: str) -> tuple[np.ndarray, list[int]]:
    """(boxes (N, 4), category ids) of a photo, in PHOTO_BOXES' order."""
    found = PHOTO_BOXES.get(name, [])
    return np.array([b for _, b in found], dtype=float).reshape(-1, 4), [c for c, _ in found]


def sam_masks(predictor, image, boxes) -> tuple[np.ndarray, np.ndarray]:
    """What SAM gives for these boxes, one mask each: (N, H, W) bool, (N,) predicted IoUs."""
    predictor.set_image(image)
    masks, scores, _ = predictor.predict_batch(boxes=np.asarray(boxes, dtype=float), multimask_output=False)
    return masks[:, 0], scores[:, 0]


def yolo_masks(label_file: Path, width: int, height: int) -> tuple[list[int], list[np.ndarray]]:
    """A YOLO segmentation label file read back: class ids and each line's polygon rasterised
    (cv2.fillPoly at pixel centres, as Ultralytics' polygon2mask does at full resolution)."""
    classes, masks = [], []
    for line in label_file.read_text().splitlines():
        values = line.split()
        xy = np.array(values[1:], dtype=float).reshape(-1, 2) * [width, height]
        out = np.zeros((height, width), np.uint8)
        cv2.fillPoly(out, [np.round(xy).astype(np.int32)], 1)
        classes.append(int(values[0]))
        masks.append(out.astype(bool))
    return classes, masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
