"""Enrich a small FiftyOne dataset with SAM masks, then open the App to look at them.

    python examples/fiftyone_enrich.py [--images DIR] [--model mobile_sam] [--points-per-side 16]
                                       [--boxes-from-everything 3] [--no-app]

1. loads the images of a folder into a persistent dataset ("samkit-enrich");
2. runs the plugin's segment_everything operator (as the App would) into "sam_everything";
3. turns the best few of those masks' boxes into a "boxes" field and runs segment_prompts on it,
   the way you would on a detector's or an annotator's boxes, into "boxes_sam";
4. opens the App (http://localhost:5151): press ` to browse operations and run the SAM operators
   on any view or selection.

Re-running skips samples that already have results. The @samkit/fiftyone plugin must be where
FiftyOne finds plugins (``samkit fiftyone install``); from a source checkout this script falls
back to the checkout's plugins/ folder.
"""

import argparse
import os
from pathlib import Path

from samkit.options import add_generator_arguments

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--images", default=str(Path(__file__).parent / "images"), help="folder of images")
parser.add_argument("--dataset", default="samkit-enrich")
parser.add_argument("--model", default="", help="model name or checkpoint path (default: $SAMKIT_CHECKPOINT, else "
                                                "$SAMKIT_MODEL, else mobile_sam)")
parser.add_argument("--points-per-side", type=int, default=16)
add_generator_arguments(parser, ("pred_iou_thresh", "stability_score_thresh"))
parser.add_argument("--max-masks", type=int, default=100)
parser.add_argument("--boxes-from-everything", type=int, default=3, help="masks per image to reuse as box prompts")
parser.add_argument("--port", type=int, default=5151)
parser.add_argument("--no-app", action="store_true", help="do not open the App (for scripts and CI)")
args = parser.parse_args()

import fiftyone as fo  # noqa: E402
import fiftyone.core.labels as fol  # noqa: E402
import fiftyone.operators as foo  # noqa: E402
import fiftyone.plugins as fop  # noqa: E402

if "@samkit/fiftyone" not in [p.name for p in fop.list_plugins()]:
    checkout_plugins = Path(__file__).resolve().parents[1] / "plugins"
    if not (checkout_plugins / "fiftyone" / "fiftyone.yml").is_file():
        raise SystemExit("the @samkit/fiftyone plugin is not installed: run `samkit fiftyone install`")
    fo.config.plugins_dir = str(checkout_plugins)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(checkout_plugins)  # for the App server process too

if fo.dataset_exists(args.dataset):
    dataset = fo.load_dataset(args.dataset)
else:
    dataset = fo.Dataset.from_images_dir(args.images, name=args.dataset)
    dataset.persistent = True
print(f"dataset {dataset.name!r}: {len(dataset)} images from {args.images}")

everything = foo.execute_operator(
    "@samkit/fiftyone/segment_everything",
    ctx={
        "dataset": dataset,
        "params": {
            "output_field": "sam_everything",
            "model": args.model,
            "points_per_side": args.points_per_side,
            "pred_iou_thresh": args.pred_iou_thresh,  # None: the operator's default
            "stability_score_thresh": args.stability_score_thresh,
            "max_masks": args.max_masks,
        },
    },
).result
print("segment_everything:", everything["message"])

# Box prompts, as a detector or an annotator would give them (here: the best few masks' boxes).
for sample in dataset.exists("sam_everything"):
    if sample.has_field("boxes") and sample.boxes is not None:
        continue
    best = sample.sam_everything.detections[: args.boxes_from_everything]
    sample["boxes"] = fol.Detections(
        detections=[fol.Detection(label=f"object {i}", bounding_box=d.bounding_box) for i, d in enumerate(best)]
    )
    sample.save()

prompts = foo.execute_operator(
    "@samkit/fiftyone/segment_prompts",
    ctx={"dataset": dataset, "params": {"prompt_field": "boxes", "output_field": "boxes_sam", "model": args.model}},
).result
print("segment_prompts:", prompts["message"])

print(f"{dataset.count('sam_everything.detections')} masks from segment_everything, "
      f"{dataset.count('boxes_sam.detections')} from box prompts")

if not args.no_app:
    session = fo.launch_app(dataset, port=args.port, auto=False)
    print(f"App: http://localhost:{args.port}  (Ctrl-C to quit)")
    session.wait()
