#!/usr/bin/env python
"""Where samkit's time goes: torch.profiler tables for one stage, ours next to the official one.

    python benchmarks/profile_core.py encoder            # ViT-B image encoder, fp32
    python benchmarks/profile_core.py encoder --bf16
    python benchmarks/profile_core.py decoder --prompts 64
    python benchmarks/profile_core.py predict            # one interactive prompt, masks at image size
    python benchmarks/profile_core.py generate --points-per-side 16   # cProfile of MaskGenerator

Same seeded weights as bench_core.py. Prints the CPU time of each stage (after a warm-up call)
and the ops that take it, grouped by input shape. Use --threads 1 on a shared machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "core"))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_core  # noqa: E402
import oracle  # noqa: E402

import samkit  # noqa: E402
from samkit.predictor import ImageState  # noqa: E402


def cpu_time(fn, warmup=1):
    for _ in range(warmup):
        fn()
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - t0


def show(name, fn, rows, by_shape=True):
    cpu, wall = cpu_time(fn)
    print(f"\n### {name}: {cpu * 1000:.1f} ms CPU, {wall * 1000:.1f} ms wall")
    with profile(record_shapes=by_shape) as prof:
        fn()
    averages = prof.key_averages(group_by_input_shape=by_shape)
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40,
                         max_shapes_column_width=90))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["encoder", "decoder", "predict", "generate"])
    ap.add_argument("--model", choices=["vit_b", "mobile_sam"], default="vit_b")
    ap.add_argument("--bf16", action="store_true", help="our bf16 path (official under bf16 autocast)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--no-official", action="store_true")
    ap.add_argument("--image", default=str(bench_core.DEFAULT_IMAGE))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    sam = oracle.official()
    ours, ours_bf16, official, hybrid, _ = bench_core.build_models(args.model, None)
    model = ours_bf16 if args.bf16 else ours
    image = samkit.load_image(args.image)
    h, w = image.shape[:2]
    off_pred = sam.SamPredictor(hybrid)
    resized = off_pred.transform.apply_image(image)
    x = hybrid.preprocess(torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float())
    input_size = tuple(resized.shape[:2])
    print(f"{args.model}, {'bf16' if args.bf16 else 'fp32'}, {torch.get_num_threads()} threads")

    if args.stage == "encoder":
        show("samkit encoder", lambda: model.embed_image(x), args.rows)
        if official is not None and not args.no_official:
            def run_official():
                with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
                    official.image_encoder(x)
            show("official encoder", run_official, args.rows)
        return

    features = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    pred = samkit.Predictor(model)
    pred.set_image_state(ImageState(features, (h, w), input_size))
    n = args.prompts
    pts = bench_core.grid_points(n, h, w)
    coords = torch.as_tensor(off_pred.transform.apply_coords(pts, (h, w)), dtype=torch.float)[:, None, :]
    labels = torch.ones((n, 1), dtype=torch.int)

    if args.stage == "decoder":
        show(f"samkit decoder, {n} prompts", lambda: pred.decode_low_res(coords, labels, multimask_output=True),
             args.rows)
        if not args.no_official:
            pe = hybrid.prompt_encoder

            def run_official():
                with torch.inference_mode():
                    for s in range(0, n, 64):
                        sparse, dense = pe(points=(coords[s : s + 64], labels[s : s + 64]), boxes=None, masks=None)
                        hybrid.mask_decoder(image_embeddings=features, image_pe=pe.get_dense_pe(),
                                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                            multimask_output=True)
            show(f"official decoder, {n} prompts", run_official, args.rows)
        return

    if args.stage == "predict":
        point, one = np.array([[w * 0.55, h * 0.45]]), np.array([1])
        show("samkit predict (decoder only)", lambda: pred.decode_low_res(coords[:1], labels[:1]), args.rows)
        show("samkit predict (one point, 3 masks at image size)",
             lambda: pred.predict(point_coords=point, point_labels=one), args.rows)
        if not args.no_official:
            off_pred.features = features
            off_pred.original_size, off_pred.input_size, off_pred.is_image_set = (h, w), input_size, True
            show("official predict", lambda: off_pred.predict(point_coords=point, point_labels=one), args.rows)
        return

    # generate: cProfile by function (Python-level stages), ours then official
    kw = dict(points_per_side=args.points_per_side)
    runs = [("samkit MaskGenerator", lambda: samkit.MaskGenerator(model, **kw).generate(image))]
    if not args.no_official:
        runs.append(("official SamAutomaticMaskGenerator",
                     lambda: sam.SamAutomaticMaskGenerator(hybrid, **kw).generate(image)))
    for name, fn in runs:
        prof = cProfile.Profile()
        c0 = time.process_time()
        prof.runcall(fn)
        print(f"\n### {name}: {time.process_time() - c0:.2f} s CPU")
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.rows + 10)
        print(out.getvalue())


if __name__ == "__main__":
    main()
