"""`samkit finetune`: the command over samkit.finetune(...).

`add_commands(subparsers)` builds the whole sub-command; pyproject.toml registers it under the
`samkit.commands` entry points, as the adapters' commands. Standard library only at import time.
"""

from __future__ import annotations

import argparse


def add_commands(subparsers) -> argparse.ArgumentParser:
    """Add `finetune` to an argparse sub-parser collection; returns its parser."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model's mask decoder on labelled objects (COCO JSON or YOLO dataset)",
        description="Fine-tune the mask decoder (optionally the prompt encoder) on your labels, the image encoder "
        "frozen. Writes the tuned checkpoint in its base model's format, and beside it <stem>.json (scores, "
        "settings), <stem>.log.jsonl and <stem>.png (loss and mIoU per epoch).",
    )
    p.add_argument("--model", "-m", default="mobile_sam",
                   help="base model name (mobile_sam, vit_b, vit_l, vit_h) or checkpoint path")
    p.add_argument("--train", required=True,
                   help="training data: a COCO instance JSON, or a YOLO segmentation dataset (folder or data YAML)")
    p.add_argument("--val", help="validation data in the same forms (default: --val-fraction of --train held out)")
    p.add_argument("--images", help="folder the COCO file names are relative to (default: the JSON's folder)")
    p.add_argument("--classes", help="comma-separated class names to train on (default: all)")
    p.add_argument("--output", "-o", required=True, help="the tuned checkpoint to write (e.g. tuned.pt)")
    add_training_options(p)
    p.set_defaults(func=run)
    return p


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The training options every fine-tuning command takes (`samkit finetune`, and adapters'
    commands over other data sources); `training_kwargs(args)` turns them into finetune()'s."""
    from . import defaults

    parser.add_argument("--epochs", type=int, default=defaults.EPOCHS)
    parser.add_argument("--lr", type=float, default=defaults.LR,
                        help=f"AdamW learning rate (default {defaults.LR:g})")
    parser.add_argument("--weight-decay", type=float, default=defaults.WEIGHT_DECAY,
                        help=f"AdamW weight decay (default {defaults.WEIGHT_DECAY:g})")
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE, help="objects per optimiser step")
    parser.add_argument("--prompt-iterations", type=int, default=defaults.PROMPT_ITERATIONS,
                        help="prompts per object and step: the first, then correction points (default %(default)s)")
    parser.add_argument("--train-prompt-encoder", action="store_true", help="train the prompt encoder too")
    parser.add_argument("--val-fraction", type=float, default=defaults.VAL_FRACTION,
                        help="share of the training images held out when --val is not given (0: no validation)")
    parser.add_argument("--patience", type=int, help="stop after this many epochs without a better validation score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    parser.add_argument("--work-dir",
                        help="where the resume state and embeddings go (default: <output stem>.finetune/)")
    parser.add_argument("--embeddings",
                        help="keep the image embeddings here, to reuse them in later runs on the same images and "
                        "base model (default: inside the work folder, removed after the run)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its last finished epoch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def training_kwargs(args: argparse.Namespace) -> dict:
    """finetune()'s keyword arguments from the options of add_training_options."""
    return dict(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
        prompt_iterations=args.prompt_iterations, train_prompt_encoder=args.train_prompt_encoder,
        val_fraction=args.val_fraction, patience=args.patience, seed=args.seed, device=args.device, dtype=args.dtype,
        work_dir=args.work_dir, cache_dir=args.embeddings, resume=args.resume, overwrite=args.overwrite,
        progress=not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    from .trainer import finetune

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    finetune(args.model, args.train, args.output, args.val, images=args.images, classes=classes,
             **training_kwargs(args))
    return 0
