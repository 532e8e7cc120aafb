"""Prompted segmentation: a click, a click with a background click, a box.

    python examples/core_prompts.py [IMAGE] [--model mobile_sam|vit_b|/path/to/checkpoint]

Writes prompts_*.png overlays next to the current directory.
"""

import argparse
from pathlib import Path

import numpy as np

import samkit
from samkit.utils.visualize import overlay_masks, save_png

parser = argparse.ArgumentParser()
parser.add_argument("image", nargs="?", default=str(Path(__file__).parent / "images" / "dog.jpg"))
parser.add_argument("--model", default="mobile_sam")
args = parser.parse_args()

model = samkit.load_model(args.model)
predictor = samkit.Predictor(model)
predictor.set_image(args.image)  # the only expensive step; prompts below reuse the embedding
image = samkit.load_image(args.image)
height, width = image.shape[:2]

# One click in the middle: three candidate masks, keep the best.
click = np.array([[width / 2, height / 2]])
masks, scores, logits = predictor.predict(point_coords=click, point_labels=np.array([1]), multimask_output=True)
best = int(scores.argmax())
save_png("prompts_click.png", overlay_masks(image, masks[best : best + 1], points=click))

# Refine with a background click, feeding the previous low-res logits back in.
points = np.array([[width / 2, height / 2], [width / 8, height / 8]])
masks, scores, _ = predictor.predict(
    points, np.array([1, 0]), mask_input=logits[best : best + 1], multimask_output=False
)
save_png("prompts_refined.png", overlay_masks(image, masks, points=points, point_labels=[1, 0]))

# A box around the centre half of the image.
box = np.array([width / 4, height / 4, 3 * width / 4, 3 * height / 4])
masks, scores, _ = predictor.predict(box=box, multimask_output=False)
save_png("prompts_box.png", overlay_masks(image, masks, boxes=box[None]))
print("wrote prompts_click.png, prompts_refined.png, prompts_box.png; scores", np.round(scores, 3))
