"""The `samkit` command: model info and download, prompted and automatic segmentation, auto-annotation.

Adapters add their own sub-commands (`samkit geo`, `samkit label-studio`, `samkit fiftyone`): each
registers an `add_commands(subparsers)` function under the entry-point group `samkit.commands`
(pyproject.toml), so the core names no adapter.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from .errors import SamkitError

PACKAGE_DIR = Path(__file__).resolve().parent

COMMANDS_GROUP = "samkit.commands"


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise SamkitError(f"{what}: expected numbers separated by commas, got {text!r}") from None


def parse_points(text: str) -> list[list[float]]:
    """'x,y;x,y' (or 'x,y x,y') -> [[x, y], ...]."""
    values = parse_floats(text.replace(" ", ";"), "--points")
    if not values or len(values) % 2:
        raise SamkitError(f"--points: expected x,y pairs like '500,375;1125,625', got {text!r}")
    return [values[i : i + 2] for i in range(0, len(values), 2)]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "-m", default="mobile_sam", help="model name (mobile_sam, vit_b, vit_l, vit_h) or checkpoint path"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")


def cmd_info(args: argparse.Namespace) -> int:
    from .ultralytics_api import SAM

    SAM(args.model, device=args.device, dtype=args.dtype).info()
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .build import CHECKPOINTS, MODEL_ALIASES, fetch_checkpoint

    names = list(CHECKPOINTS) if args.model == "all" else [args.model]
    for name in names:
        key = MODEL_ALIASES.get(name.lower())
        if key is None:
            raise SamkitError(f"unknown model {name!r}; choose from {', '.join(CHECKPOINTS)} or 'all'")
        print(fetch_checkpoint(key))
    return 0


def _write_outputs(result, out_dir: Path, write_masks: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    result.save(out_dir / "overlay.png")
    result.save_json(out_dir / "masks.json")
    if write_masks:
        result.save_masks(out_dir / "masks")
    print(f"{len(result)} masks -> {out_dir}/ (overlay.png, masks.json{', masks/*.png' if write_masks else ''})")


def cmd_predict(args: argparse.Namespace) -> int:
    from .ultralytics_api import SAM

    points = parse_points(args.points) if args.points else None
    labels = [int(v) for v in parse_floats(args.labels, "--labels")] if args.labels else None
    box = parse_floats(args.box, "--box") if args.box else None
    if box is not None and len(box) != 4:
        raise SamkitError(f"--box: expected x0,y0,x1,y1, got {args.box!r}")
    if points is None and box is None:
        raise SamkitError("give --points (with --labels) and/or --box; use `samkit everything` for automatic masks")
    if points is not None and labels is not None and len(labels) != len(points):
        raise SamkitError(f"{len(points)} points but {len(labels)} labels: give one label (1 or 0) per point")
    sam = SAM(args.model, device=args.device, dtype=args.dtype)
    # All points describe one object (the interactive convention), so nest them one level deeper.
    nested_points = [points] if points is not None else None
    nested_labels = [labels if labels is not None else [1] * len(points)] if points is not None else None
    result = sam(args.image, bboxes=box, points=nested_points, labels=nested_labels, multimask_output=args.multimask)[0]
    _write_outputs(result, Path(args.output), write_masks=True)
    return 0


def cmd_everything(args: argparse.Namespace) -> int:
    from .ultralytics_api import SAM

    options = {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "crop_n_layers": args.crop_n_layers,
        "min_mask_region_area": args.min_mask_region_area,
    }
    sam = SAM(args.model, device=args.device, dtype=args.dtype, **options)
    start = time.perf_counter()
    result = sam(args.image)[0]
    print(f"segment everything: {time.perf_counter() - start:.1f} s")
    _write_outputs(result, Path(args.output), write_masks=args.png_masks)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samkit", description="Segment Anything (SAM, MobileSAM) in pure PyTorch")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"samkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print a model's architecture, parameters and checkpoint")
    p.add_argument("model", nargs="?", default="mobile_sam")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.set_defaults(func=lambda a: cmd_info(argparse.Namespace(model=a.model, device=a.device, dtype=a.dtype)))

    p = sub.add_parser("download", help="download and verify an official checkpoint into the cache")
    p.add_argument("model", help="mobile_sam, vit_b, vit_l, vit_h, or all")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("predict", help="masks for one object from points and/or a box")
    p.add_argument("image")
    p.add_argument("--points", help="x,y pairs: '500,375;1125,625'")
    p.add_argument("--labels", help="one per point, 1 = object, 0 = background: '1,0'")
    p.add_argument("--box", help="x0,y0,x1,y1")
    p.add_argument(
        "--multimask", action="store_true", help="keep the best of three candidate masks (for one ambiguous click)"
    )
    p.add_argument("--output", "-o", default="samkit-out")
    add_model_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("everything", help="segment every object in an image")
    p.add_argument("image")
    p.add_argument("--output", "-o", default="samkit-out")
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--points-per-batch", type=int, default=64)
    p.add_argument("--pred-iou-thresh", type=float, default=None,
                   help="keep masks whose predicted IoU is above this (default: the model's, 0.88 for SAM 1)")
    p.add_argument("--stability-score-thresh", type=float, default=0.95)
    p.add_argument("--crop-n-layers", type=int, default=0)
    p.add_argument("--min-mask-region-area", type=int, default=0)
    p.add_argument("--png-masks", action="store_true", help="also write one PNG per mask")
    add_model_options(p)
    p.set_defaults(func=cmd_everything)

    from .annotate.cli import add_command as add_annotate

    add_annotate(sub)

    for add in registered_commands():
        add(sub)
    return parser


def registered_commands() -> list[Callable]:
    """The `add_commands(subparsers)` functions installed packages register under the entry-point
    group `samkit.commands`, by name (one per name: an environment may see a distribution twice).
    A registration whose module cannot be imported is left out."""
    found: dict[str, Callable] = {}
    for entry in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        if entry.name in found:
            continue
        try:
            found[entry.name] = entry.load()
        except ImportError:
            continue
    return [found[name] for name in sorted(found)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # samkit's own warnings (float16 on a CPU, ...) are one line like its errors, not a path,
    # a line number and a line of source code
    show_warning = warnings.showwarning

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        if Path(filename).resolve().is_relative_to(PACKAGE_DIR):
            print(f"samkit: warning: {message}", file=file or sys.stderr)
        else:  # another library's: its own format, which says where it comes from
            show_warning(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line_warning
    try:
        return int(args.func(args) or 0)
    except SamkitError as exc:
        print(f"samkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("samkit: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = show_warning



if __name__ == "__main__":
    sys.exit(main())
