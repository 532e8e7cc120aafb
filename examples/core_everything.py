"""Segment everything in an image and save the records as COCO-style JSON plus an overlay.

    python examples/core_everything.py [IMAGE] [--model mobile_sam] [--points-per-side 32]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

import samkit
from samkit import mask_utils
from samkit.utils.visualize import overlay_masks, save_png

parser = argparse.ArgumentParser()
parser.add_argument("image", nargs="?", default=str(Path(__file__).parent / "images" / "dog.jpg"))
parser.add_argument("--model", default="mobile_sam")
parser.add_argument("--points-per-side", type=int, default=32)
args = parser.parse_args()

model = samkit.load_model(args.model)
generator = samkit.MaskGenerator(model, points_per_side=args.points_per_side, output_mode="coco_rle")
start = time.perf_counter()
records = generator.generate(args.image)
print(f"{len(records)} masks in {time.perf_counter() - start:.1f} s")

Path("everything.json").write_text(json.dumps(records))
image = samkit.load_image(args.image)
masks = (
    np.stack([mask_utils.rle_to_mask(r["segmentation"]) for r in records])
    if records
    else np.zeros((0, *image.shape[:2]), bool)
)
save_png("everything.png", overlay_masks(image, masks))
print("wrote everything.json and everything.png")
