"""The `samkit` command: model info and download, prompted and automatic segmentation, auto-annotation.

Adapters add their own sub-commands (`samkit geo`, `samkit label-studio`, `samkit fiftyone`): each
registers an `add_commands(subparsers)` function under the entry-point group `samkit.commands`
(pyproject.toml), so the core names no adapter.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from .errors import SamkitError
from .options import add_generator_arguments, generator_arguments
from .utils.files import output_directory

PACKAGE_DIR = Path(__file__).resolve().parent

COMMANDS_GROUP = "samkit.commands"
#: the samkit.GeneratorOptions settings `samkit everything` takes as flags (--points-per-side, ...)
EVERYTHING_OPTIONS = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                      "crop_n_layers", "min_mask_region_area", "use_m2m")


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
        "--model", "-m", default=None,
        help="model name (mobile_sam, vit_b, vit_l, vit_h) or checkpoint path (default: $SAMKIT_CHECKPOINT, "
             "else $SAMKIT_MODEL, else mobile_sam)",
    )
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or mps (default: $SAMKIT_DEVICE, else the best available)")
    parser.add_argument("--dtype", default=None,
                        help="float32, bfloat16 or float16 (default: $SAMKIT_DTYPE, else float32)")


def _model_args(args: argparse.Namespace) -> dict:
    """--model, --device and --dtype, with the environment's SAMKIT_* where they are not given."""
    from .models import device_setting, dtype_setting, model_source

    return {"model": model_source(args.model), "device": device_setting(args.device),
            "dtype": dtype_setting(args.dtype)}


# Options whose value is a list of numbers that may start with a minus sign
NUMBER_LIST_OPTIONS = ("--points", "--labels", "--box")


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """`--box -10,20,300,400` -> `--box=-10,20,300,400`: argparse takes a value that starts with
    '-' and is not a plain number for an option, and `--box` would then have no value."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if (arg in NUMBER_LIST_OPTIONS and i + 1 < len(args)
                and re.fullmatch(r"-[\d.][\d.,;\s-]*", args[i + 1])):
            out.append(f"{arg}={args[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from .build import CHECKPOINTS, build_sam, cache_dir
    from .registry import lookup
    from .ultralytics_api import SAM

    spec = lookup(str(args.model))
    if spec is not None and not Path(args.model).expanduser().is_file():
        checkpoint = CHECKPOINTS[spec.name]
        if not (cache_dir() / checkpoint.filename).is_file():
            # The architecture's facts need no weights (and info must not download gigabytes): the
            # registry has them; a model without a recorded count is built on torch's meta device,
            # which allocates nothing.
            params = spec.parameters
            if params is None:
                import torch

                with torch.device("meta"):
                    params = build_sam(spec.name).num_parameters()
            encoder = f", {spec.encoder}" if spec.encoder else ""
            print(f"{spec.name} ({spec.title}{encoder}): {params:,} parameters, {params * 4 / 1e6:.1f} MB as "
                  f"float32; checkpoint {checkpoint.filename} is not in {cache_dir()} (samkit download {spec.name} "
                  f"fetches it from {checkpoint.url})")
            return 0
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
    out_dir = output_directory(out_dir)
    result.save(out_dir / "overlay.png")
    result.save_json(out_dir / "masks.json")
    if write_masks:
        result.save_masks(out_dir / "masks")
    print(f"{len(result)} masks -> {out_dir}/ (overlay.png, masks.json{', masks/*.png' if write_masks else ''})")


def cmd_predict(args: argparse.Namespace) -> int:
    from .image_io import load_image
    from .utils.prompts import check_prompts
    from .ultralytics_api import SAM, nest_prompts

    points = parse_points(args.points) if args.points else None
    labels = [int(v) for v in parse_floats(args.labels, "--labels")] if args.labels else None
    box = parse_floats(args.box, "--box") if args.box else None
    if box is not None and len(box) != 4:
        raise SamkitError(f"--box: expected x0,y0,x1,y1, got {args.box!r}")
    if points is None and box is None:
        raise SamkitError("give --points (with --labels) and/or --box; use `samkit everything` for automatic masks")
    if points is not None and labels is not None and len(labels) != len(points):
        raise SamkitError(f"{len(points)} points but {len(labels)} labels: give one label (1 or 0) per point")
    output_directory(args.output, create=False)  # before any work
    # All points describe one object (the interactive convention), so nest them one level deeper.
    nested_points = [points] if points is not None else None
    nested_labels = [labels if labels is not None else [1] * len(points)] if points is not None else None
    # What needs no model is checked first: the image, and the prompts against its size (loading
    # the model and encoding the image take seconds).
    image = load_image(args.image)
    check_prompts(image.shape[:2], *nest_prompts(box, nested_points, nested_labels))
    sam = SAM(**_model_args(args))
    result = sam(image, bboxes=box, points=nested_points, labels=nested_labels, multimask_output=args.multimask)[0]
    result.path = str(args.image)
    _write_outputs(result, Path(args.output), write_masks=args.png_masks)
    return 0


class ProgressBar:
    """A tqdm bar for MaskGenerator's progress callback: drawn only on a terminal and without -q,
    so a log file or CI output gets no carriage-return lines."""

    def __init__(self, desc: str, quiet: bool) -> None:
        self.desc = desc
        self.enabled = not quiet and sys.stderr.isatty()
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="prompt", dynamic_ncols=True, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            # tqdm redraws at most every 0.1 s, so a fast last batch may never be drawn; show the
            # final count before the bar (leave=False) clears its line
            self.bar.refresh()
            self.bar.close()


def nothing_found_hint(stats) -> str:
    """Why segment-everything kept no mask, and which options to lower (GenerationStats)."""
    if stats is None or stats.candidates == 0:
        return "no masks found"
    best = f" (the best was {stats.best_iou:.2f})" if stats.best_iou is not None else ""
    if stats.above_iou == 0:
        why = (f"none of the {stats.candidates} candidate masks had a predicted IoU above "
               f"--pred-iou-thresh {stats.pred_iou_thresh:g}{best}")
    elif stats.above_stability == 0:
        why = (f"{stats.above_iou} of {stats.candidates} candidate masks passed --pred-iou-thresh "
               f"{stats.pred_iou_thresh:g}, none --stability-score-thresh {stats.stability_score_thresh:g}")
    else:
        why = f"{stats.above_stability} masks passed both thresholds, none survived --min-mask-region-area"
    return (f"no masks found: {why}. Lower the thresholds to keep more, e.g. --pred-iou-thresh 0.5 "
            "--stability-score-thresh 0.8 (0 keeps every candidate)")


def cmd_everything(args: argparse.Namespace) -> int:
    from .image_io import load_image
    from .ultralytics_api import SAM

    output_directory(args.output, create=False)  # before any work
    image = load_image(args.image)  # an unreadable image fails before the model loads
    sam = SAM(**_model_args(args), **generator_arguments(args, EVERYTHING_OPTIONS))
    start = time.perf_counter()
    bar = ProgressBar("segment everything", args.quiet)
    try:
        result = sam(image, progress=bar)[0]
    finally:
        bar.close()
    result.path = str(args.image)
    print(f"segment everything: {len(result)} masks in {time.perf_counter() - start:.1f} s")
    if len(result) == 0:
        print(f"samkit: warning: {nothing_found_hint(sam.last_stats)}", file=sys.stderr)
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

    p = sub.add_parser("predict", help="masks for one object from points and/or a box",
                       description="Masks for one object from point and/or box prompts (XY pixels; negative "
                                   "values are fine: --box -10,20,300,400).")
    p.add_argument("image")
    p.add_argument("--points", help="x,y pairs: '500,375;1125,625'")
    p.add_argument("--labels", help="one per point, 1 = object, 0 = background: '1,0'")
    p.add_argument("--box", help="x0,y0,x1,y1")
    p.add_argument(
        "--multimask", action="store_true", help="keep the best of three candidate masks (for one ambiguous click)"
    )
    p.add_argument("--output", "-o", default="samkit-out", help="output directory (default: %(default)s)")
    p.add_argument("--png-masks", action="store_true", help="also write the mask as a PNG (masks/mask_0000.png)")
    add_model_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("everything", help="segment every object in an image",
                       description="Segment every object: a grid of point prompts, the masks filtered by "
                                   "predicted IoU and stability, duplicates removed (SAM's automatic mask "
                                   "generator, same parameters).")
    p.add_argument("image")
    p.add_argument("--output", "-o", default="samkit-out", help="output directory (default: %(default)s)")
    add_generator_arguments(p, EVERYTHING_OPTIONS)
    p.add_argument("--png-masks", action="store_true", help="also write one PNG per mask (masks/)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (none is drawn outside a terminal)")
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
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
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
