"""The Ultralytics-style facade: prompts in, results that plot and save themselves.

    python examples/core_overlay.py [IMAGE] [--model mobile_sam.pt]
"""

import argparse
from pathlib import Path

import samkit

parser = argparse.ArgumentParser()
parser.add_argument("image", nargs="?", default=str(Path(__file__).parent / "images" / "dog.jpg"))
parser.add_argument("--model", default="mobile_sam.pt")
args = parser.parse_args()

model = samkit.SAM(args.model)
model.info()
result = model(args.image, points=[[[300, 250], [120, 80]]], labels=[[1, 0]])[0]  # one object, two clicks
result.save("overlay_points.png")
result = model(args.image, bboxes=[[60, 60, 500, 500]])[0]
result.save("overlay_box.png")
result.save_json("overlay_box.json")
print("wrote overlay_points.png, overlay_box.png, overlay_box.json")
