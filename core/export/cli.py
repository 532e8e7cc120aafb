"""`samkit export MODEL -o DIR`: the command over samkit.export.

Imports only the standard library at import time (the command line stays fast); the exporter and
torch are imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` sub-command."""
    p = subparsers.add_parser(
        "export",
        help="export a model (or a fine-tuned checkpoint) to ONNX: encoder, decoder and model.json",
        description="Export a SAM-family model to ONNX files in a new folder, with a model.json that describes "
        "them. SAM 1's decoder has the official segment-anything ONNX inputs and outputs; SAM 2's those of "
        "samexporter and the FiftyOne App.",
    )
    p.add_argument("model", help="model name (e.g. mobile_sam, vit_b; see `samkit models`) or a checkpoint file")
    p.add_argument("--output", "-o", required=True, help="folder to create (refused if it exists, see --overwrite)")
    p.add_argument("--format", default="onnx", help="export format (onnx)")
    p.add_argument("--parts", default=None, help="comma-separated graphs to export (default: encoder,decoder)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--quantize", action="store_true", help="also write an int8 decoder (decoder.quant.onnx)")
    p.add_argument(
        "--single-mask", action="store_true",
        help="the decoder returns one mask (chosen as the official export's --return-single-mask does)",
    )
    p.add_argument(
        "--static-points", type=int, default=None, metavar="N",
        help="fix the decoder's point count at N (padding point and box corners included); default: any count",
    )
    p.add_argument(
        "--fiftyone-app", action="store_true",
        help="SAM 2: also write encoder.with_runtime_opt.ort, so that the folder can be the FiftyOne App's "
        "FIFTYONE_MODEL_WEIGHTS_BASE_SAM2",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from . import export

    result = export(
        args.model,
        args.output,
        format=args.format,
        parts=args.parts,
        opset=args.opset,
        quantize=args.quantize,
        dynamic_points=args.static_points is None,
        num_points=args.static_points if args.static_points is not None else 2,
        single_mask=args.single_mask,
        overwrite=args.overwrite,
        fiftyone_app=args.fiftyone_app,
    )
    for part, path in result.files.items():
        size = sum(p.stat().st_size for p in Path(path).parent.glob(Path(path).name + "*"))
        print(f"{part}: {path} ({size / 2**20:.1f} MB)")
    print(f"metadata: {result.output_dir / 'model.json'}")
    return 0
