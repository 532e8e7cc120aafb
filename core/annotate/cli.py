"""`samkit annotate`: the command-line face of samkit.auto_annotate. Standard library only at
import time (the `samkit` command builds every parser at start-up)."""

from __future__ import annotations

import argparse
import sys


def add_command(subparsers) -> argparse.ArgumentParser:
    """Add `annotate` to the `samkit` command's sub-parsers; returns its parser."""
    p = subparsers.add_parser(
        "annotate", help="detect objects (or find them by text) and segment them: a YOLO/COCO/Label Studio dataset",
        description="Detect objects in every image of a folder (a YOLO model, existing box labels, or a text prompt "
                    "for GroundingDINO/OWLv2), segment them with SAM, and write a segmentation dataset. As "
                    "Ultralytics' auto_annotate, with COCO and Label Studio output, re-runs and Dask.")
    p.add_argument("images", help="a folder of images (subfolders are not searched) or one image file")
    p.add_argument("--det-model", "-d", default=None,
                   help="YOLO box-label folder, COCO JSON with boxes, YOLO .onnx, Ultralytics .pt, or a "
                        "GroundingDINO/OWLv2 model id or folder (with --text; default with --text: "
                        "IDEA-Research/grounding-dino-tiny)")
    p.add_argument("--text", "-t", default=None, help="what to find, for a text detector: 'building. tree.'")
    p.add_argument("--model", "-m", default="mobile_sam", help="SAM model name or checkpoint (default mobile_sam)")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--dtype", default=None, help="SAM's precision: float32 (default), bfloat16 or float16")
    p.add_argument("--format", "-f", default="yolo", help="yolo (default), coco, labelstudio, or fiftyone "
                                                          "(with samkit[fiftyone]; -O dataset=NAME)")
    p.add_argument("--output-dir", "-o", default=None, help="default: <images>_auto_annotate_labels beside the images")
    p.add_argument("--conf", type=float, default=0.25, help="detector score threshold (text: box threshold); 0.25")
    p.add_argument("--iou", type=float, default=0.45, help="class-aware NMS IoU threshold (0.45)")
    p.add_argument("--imgsz", type=int, default=640, help="YOLO input size (640)")
    p.add_argument("--max-det", type=int, default=300, help="most boxes per image (300)")
    p.add_argument("--classes", default=None, help="class ids or names to keep, comma-separated: '0,2' or 'person,car'")
    p.add_argument("--text-threshold", type=float, default=0.25, help="text detectors: phrase score threshold (0.25)")
    p.add_argument("--mask-format", choices=("polygons", "rle"), default=None,
                   help="coco/labelstudio: rle (default; Label Studio brush) or polygons")
    p.add_argument("--no-holes", dest="holes", action="store_false",
                   help="polygons without holes (outer outlines only, as Ultralytics)")
    p.add_argument("--pieces", choices=("merge", "largest", "split"), default="merge",
                   help="a mask in several pieces: merge (one object; one joined polygon where a format needs one), "
                        "largest (keep the largest piece), split (one object per piece)")
    p.add_argument("--min-area", type=int, default=0, help="drop pieces and fill holes under this many pixels")
    p.add_argument("--non-overlapping", action="store_true",
                   help="each pixel in at most one object (the higher detector score wins)")
    p.add_argument("--tolerance", type=float, default=1.0, help="polygon simplification in pixels (1; 0: none)")
    p.add_argument("--skip-existing", action="store_true",
                   help="keep images already done (resume an interrupted run); default: overwrite")
    p.add_argument("--dask", default=None, help="spread images over Dask: a number of local workers or a scheduler "
                                                "address (tcp://host:8786); needs samkit[dask]")
    p.add_argument("--format-option", "-O", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the format, e.g. -O document_root=/data (labelstudio), "
                        "-O dataset=NAME (fiftyone)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_annotate)
    return p


def _format_options(items: list[str]) -> dict[str, str]:
    from ..errors import SamkitError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SamkitError(f"--format-option: expected KEY=VALUE, got {item!r}")
        options[key.strip()] = value
    return options


def _classes(text: str | None):
    if text is None:
        return None
    items = [c.strip() for c in text.split(",") if c.strip()]
    return [int(c) if c.lstrip("-").isdigit() else c for c in items]


def cmd_annotate(args: argparse.Namespace) -> int:
    from .run import auto_annotate

    dask = args.dask
    if dask is not None and dask.isdigit():
        dask = int(dask)
    try:
        summary = auto_annotate(
            args.images, args.det_model, sam_model=args.model, device=args.device, conf=args.conf, iou=args.iou,
            imgsz=args.imgsz, max_det=args.max_det, classes=_classes(args.classes), output_dir=args.output_dir,
            format=args.format, text=args.text, text_threshold=args.text_threshold, mask_format=args.mask_format,
            holes=args.holes, pieces=args.pieces, min_area=args.min_area, non_overlapping=args.non_overlapping,
            tolerance=args.tolerance, skip_existing=args.skip_existing, dask=dask, progress=args.progress,
            format_options=_format_options(args.format_option), dtype=args.dtype,
        )
    except KeyboardInterrupt:
        print("samkit: interrupted; the images done so far are kept: run the same command with --skip-existing "
              "to resume", file=sys.stderr)
        return 130
    print(summary.line())
    for key, reason in summary.failed[:10]:
        print(f"samkit: failed: {key}: {reason}", file=sys.stderr)
    if len(summary.failed) > 10:
        print(f"samkit: ... and {len(summary.failed) - 10} more failed images", file=sys.stderr)
    return 1 if summary.failed else 0
