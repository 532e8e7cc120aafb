"""``samkit geo finetune``: its parser (standard library only at import time, as cli.py)."""

from __future__ import annotations

import argparse


def add_command(sub, common_raster, model_options) -> argparse.ArgumentParser:
    from samkit.finetune import defaults

    f = sub.add_parser(
        "finetune", help="fine-tune SAM's mask decoder on a raster's labelled objects (a vector file)",
        description="Cut the raster into tiles, rasterise the label polygons into them and fine-tune the model's "
                    "mask decoder on them (samkit finetune). Then: samkit geo vectorize RASTER --model TUNED.pt")
    f.add_argument("raster")
    f.add_argument("--labels", required=True, help="vector file of object polygons (GeoPackage, GeoJSON, ...)")
    f.add_argument("--layer", help="the labels' layer in a multi-layer file")
    f.add_argument("--class-field", help="the labels' attribute that names each object's class")
    f.add_argument("--classes", help="comma-separated values of --class-field to train on (default: all)")
    f.add_argument("--val-labels", help="a second vector file to validate on (default: --val-fraction of the tiles)")
    f.add_argument("-o", "--output", required=True, help="the tuned checkpoint to write (e.g. tuned.pt)")
    f.add_argument("--tile-size", type=int, default=1024, help="tile size in pixels (default 1024, SAM's input)")
    f.add_argument("--overlap", type=int, default=0, help="tile overlap in pixels (default 0)")
    common_raster(f)
    model_options(f)
    t = f.add_argument_group("training (samkit finetune)")
    t.add_argument("--epochs", type=int, default=defaults.EPOCHS)
    t.add_argument("--lr", type=float, default=defaults.LR)
    t.add_argument("--weight-decay", type=float, default=defaults.WEIGHT_DECAY)
    t.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE, help="objects per optimiser step")
    t.add_argument("--prompt-iterations", type=int, default=defaults.PROMPT_ITERATIONS)
    t.add_argument("--train-prompt-encoder", action="store_true")
    t.add_argument("--val-fraction", type=float, default=defaults.VAL_FRACTION)
    t.add_argument("--patience", type=int)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--embeddings", help="keep the tiles' embeddings here for later runs")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    f.set_defaults(func=run)
    return f


def run(args) -> int:
    from .cli import _raster_kwargs
    from .errors import GeoError

    try:
        from . import finetune
    except ImportError as exc:
        raise GeoError(f'geo finetune needs the geo extra ({exc.name} is missing): pip install "samkit[geo]"') from exc
    raster = _raster_kwargs(args)
    if raster.pop("pixel_space"):
        raise GeoError("--pixel-space does not apply to fine-tuning: the labels are placed by their CRS")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    result = finetune.finetune(
        args.raster, args.labels, args.output, model=args.model, layer=args.layer, class_field=args.class_field,
        classes=classes, tile_size=args.tile_size, overlap=args.overlap, val_labels=args.val_labels, **raster,
        device=args.device, dtype=args.dtype, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
        batch_size=args.batch_size, prompt_iterations=args.prompt_iterations,
        train_prompt_encoder=args.train_prompt_encoder, val_fraction=args.val_fraction, patience=args.patience,
        seed=args.seed, cache_dir=args.embeddings, resume=args.resume, overwrite=args.overwrite,
        progress=not args.quiet)
    print(f"wrote {result.checkpoint} (kept epoch {result.best_epoch}); use it: samkit geo vectorize {args.raster} "
          f"--model {result.checkpoint} -o objects.gpkg")
    return 0
