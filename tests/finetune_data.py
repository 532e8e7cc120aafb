"""The Kampala test data for fine-tuning: 16 real aerial chips with OSM building footprints, and a
teacher's masks for them.

A decoder trained from seeded random weights cannot be shown to learn real objects (it collapses
to empty masks, ../shared/reference/README.md), so the training tests use a teacher: the seeded
random MobileSAM labels each building box with its own mask, and a copy of it with its mask
decoder perturbed is fine-tuned on those labels. Its agreement with the teacher on held-out
chips must rise.

``ellipse_objects``: synthetic objects (filled ellipses and their boxes) for the gradient parity
tests, which need known targets rather than real ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

MOSAIC = "fair_oam_kampala_z21_x1238424_y1046544_4x4tiles.tif"
LABELS = "fair_oam_kampala_labels.geojson"
CHIP = 256
MIN_AREA = 150  # px of a footprint's part inside a chip to count it


class Chip(NamedTuple):
    name: str  # "r{row}c{col}.png"
    image: np.ndarray  # (256, 256, 3) uint8
    footprints: list  # shapely polygons in chip pixel coordinates (x right, y down)


def kampala_chips(geo_dir: Path) -> list[Chip]:
    """The 1024 x 1024 mosaic cut into its 16 tiles of 256 px, each with the parts of the OSM
    footprints that fall in it (in pixels; the one invalid footprint repaired with buffer(0))."""
    import geopandas as gpd
    import rasterio
    from shapely.affinity import affine_transform
    from shapely.geometry import box

    with rasterio.open(geo_dir / MOSAIC) as src:
        pixels = src.read([1, 2, 3]).transpose(1, 2, 0)
        inverse = ~src.transform
        crs = src.crs
    labels = gpd.read_file(geo_dir / LABELS).to_crs(crs)
    # map coordinates -> pixel coordinates (shapely's affine: a, b, d, e, xoff, yoff)
    matrix = [inverse.a, inverse.b, inverse.d, inverse.e, inverse.c, inverse.f]
    footprints = [affine_transform(geom.buffer(0) if not geom.is_valid else geom, matrix)
                  for geom in labels.geometry]
    chips = []
    for row in range(4):
        for col in range(4):
            x0, y0 = col * CHIP, row * CHIP
            window = box(x0, y0, x0 + CHIP, y0 + CHIP)
            parts = []
            for footprint in footprints:
                part = footprint.intersection(window)
                if part.is_empty or part.area < MIN_AREA:
                    continue
                parts.append(affine_transform(part, [1, 0, 0, 1, -x0, -y0]))
            chips.append(Chip(f"r{row}c{col}.png", np.ascontiguousarray(pixels[y0:y0 + CHIP, x0:x0 + CHIP]), parts))
    return chips


def polygon_rings(geometry) -> list[np.ndarray]:
    """Exterior rings of a (Multi)Polygon as (K, 2) XY arrays (closing vertex dropped)."""
    geoms = getattr(geometry, "geoms", [geometry])
    return [np.asarray(g.exterior.coords)[:-1] for g in geoms if g.geom_type == "Polygon" and not g.is_empty]


class TeacherLabels(NamedTuple):
    folder: Path  # the chips as PNGs, teacher.json, and the embeddings the teacher computed
    coco: Path  # COCO JSON with the teacher's masks (RLE), file names relative to its folder
    embeddings: Path  # samkit.finetune's embedding store: a run on a model with the same encoder reuses it
    objects: int  # objects labelled


def write_teacher_coco(chips: list[Chip], teacher, folder: Path, min_pixels: int = 30) -> TeacherLabels:
    """Save the chips as PNGs in `folder` and a COCO JSON whose masks are the teacher's answers to
    each footprint's box (a footprint whose mask comes out smaller than `min_pixels` is left out).
    The embeddings go into fine-tuning's store, so a student with the teacher's encoder finds them."""
    import samkit
    from PIL import Image
    from samkit.finetune.embeddings import EmbeddingStore
    from samkit.mask_utils import mask_to_box, mask_to_rle

    folder.mkdir(parents=True, exist_ok=True)
    store = EmbeddingStore(teacher, folder / "embeddings", expected_images=len(chips))
    predictor = samkit.Predictor(teacher)
    images, annotations = [], []
    for image_id, chip in enumerate(chips, start=1):
        Image.fromarray(chip.image).save(folder / chip.name)
        images.append({"id": image_id, "file_name": chip.name, "width": CHIP, "height": CHIP})
        predictor.set_image_state(store.state(chip.image))
        if not chip.footprints:
            continue
        boxes = np.array([part.bounds for part in chip.footprints])
        masks, _, _ = predictor.predict_batch(boxes=boxes, multimask_output=False)
        for mask in masks[:, 0]:
            if mask.sum() < min_pixels:
                continue
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "segmentation": mask_to_rle(mask), "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_to_box(mask)],
            })
    path = folder / "teacher.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "building"}]}))
    return TeacherLabels(folder, path, folder / "embeddings", len(annotations))


def subset_coco(source: Path, target: Path, image_ids: list[int], max_objects: int | None = None) -> Path:
    """A COCO file with only some of `source`'s images (and at most max_objects objects each);
    file names made relative to `target`'s folder."""
    data = json.loads(source.read_text())
    keep = set(image_ids)
    images = [dict(image, file_name=str(source.parent / image["file_name"])) for image in data["images"]
              if image["id"] in keep]
    annotations, per_image = [], {}
    for ann in data["annotations"]:
        if ann["image_id"] in keep and (max_objects is None or per_image.get(ann["image_id"], 0) < max_objects):
            per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
            annotations.append(ann)
    target.write_text(json.dumps({"images": images, "annotations": annotations, "categories": data["categories"]}))
    return target


def perturbed_student(teacher_checkpoint: Path, path: Path, seed: int = 7, scale: float = 1.0) -> Path:
    """The teacher's checkpoint with its mask decoder's weights moved (the official file format)."""
    import torch

    state = torch.load(teacher_checkpoint, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        if key.startswith("mask_decoder.") and value.is_floating_point():
            spread = float(value.float().std()) if value.numel() > 1 else 0.0
            noise = torch.randn(value.shape, generator=generator)
            value.add_((scale * 0.25 * max(spread, 0.02) * noise).to(value.dtype))
    torch.save(state, path)
    return path


def ellipse_objects(gen: np.random.Generator, size: tuple[int, int], count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` filled ellipses (centres 80 px or more inside the image, radii 15-70 px) drawn with
    `gen` on an image of size (H, W): masks (count, H, W) bool and their boxes (count, 4) XYXY
    float64, the pixels' outer edges."""
    height, width = size
    yy, xx = np.mgrid[:height, :width]
    masks, boxes = [], []
    for _ in range(count):
        cx, cy = gen.uniform(80, width - 80), gen.uniform(80, height - 80)
        rx, ry = gen.uniform(15, 70), gen.uniform(15, 70)
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        ys, xs = np.nonzero(mask)
        masks.append(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.stack(masks), np.array(boxes, dtype=np.float64)
