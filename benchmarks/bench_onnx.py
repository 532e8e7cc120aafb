#!/usr/bin/env python
"""A click on an ONNX export in onnxruntime (CPU), next to samkit's PyTorch fast path and the
official PyTorch predictor, in one run.

Same weights, same image, same click (one positive point). The model is exported once into a
temporary folder (or --export-dir: a folder `samkit export` wrote, with encoder, decoder and the
int8 decoder). Rows:

* the image encoder (the embedding once per image): samkit (PyTorch) vs the ONNX encoder;
* one click, 3 masks at image size (`predict`): samkit.Predictor, the official SamPredictor,
  samkit.OnnxPredictor on the fp32 and on the int8 decoder;
* one click, the best mask only (what an interactive tool shows): samkit's `best_only` (with
  `return_low_res=False`), the official predictor's 3 masks and argmax, OnnxPredictor's
  `best_only` (fp32, int8);
* the decoder graph as the official ONNX example calls it: all 4 masks upscaled to the image
  inside the graph (orig_im_size), thresholded in numpy (fp32, int8).

Times are medians over --repeats calls after a warm-up; the implementations alternate within each
repeat, so that a machine whose speed drifts slows them alike. onnxruntime gets as many threads
as torch. Checks: each mask's IoU against samkit's.

    python benchmarks/bench_onnx.py                       # MobileSAM (seeded weights), truck.jpg
    python benchmarks/bench_onnx.py --model vit_b          # perturbed ViT-B (decoder rows only)
    python benchmarks/bench_onnx.py --model sam2.1_hiera_tiny   # perturbed SAM 2.1-T, the official sam2
    python benchmarks/bench_onnx.py --markdown /tmp/onnx.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "core"))

import onnx_exports  # noqa: E402  (tests/core/onnx_exports.py: the official decoder's inputs)
import oracle  # noqa: E402  (tests/core/oracle.py: official package import, weights)

import samkit  # noqa: E402
import machine_info  # noqa: E402  (benchmarks/machine_info.py: the CPU line)

SHARED = Path(os.environ.get("SAMKIT_SHARED_DIR", REPO.parent / "shared"))
DEFAULT_IMAGE = SHARED / "data" / "images" / "truck.jpg"
MOBILE_SAM = SHARED / "reference" / "mobile_sam_random" / "mobile_sam_random.pt"
COLUMNS = ("samkit (PyTorch)", "official (PyTorch)", "ONNX fp32 (onnxruntime)", "ONNX int8 (onnxruntime)")


def log(msg: str) -> None:
    print(msg, flush=True)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = CLOCKS["wall"]  # --clock


def time_alternating(fns: dict[str, callable], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds (wall, or this process's CPU time with --clock cpu: all its threads,
    onnxruntime's included) of each fn over `repeats` rounds (one call of each per round, in
    turn), after one warm-up round; and each fn's last result."""
    results = {name: fn() for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = CLOCK()
            results[name] = fn()
            samples[name].append(CLOCK() - start)
    return {name: statistics.median(s) for name, s in samples.items()}, results


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ious(masks, reference) -> str:
    values = [oracle.mask_iou(a, b) for a, b in zip(masks, reference)]
    return "IoU " + "/".join(f"{v:.4f}" for v in values)


def machine(threads: int) -> str:
    import onnxruntime

    return (f"{machine_info.cpu()}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"{threads} threads; load average {os.getloadavg()[0]:.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["mobile_sam", "vit_b", "sam2.1_hiera_tiny"], default="mobile_sam")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    ap.add_argument("--export-dir", help="use this samkit export folder instead of exporting")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall clock, or this process's CPU time (steadier on a shared machine, best with --threads 1)")
    ap.add_argument("--markdown", default="", help="write the table here as markdown")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads

    image = samkit.load_image(args.image)
    height, width = image.shape[:2]
    start = machine(threads)
    log(f"ONNX click benchmark, {args.model}, {Path(args.image).name} ({width}x{height}); {start}")

    if args.model == "sam2.1_hiera_tiny":
        import sam2_oracle  # tests/core/sam2_oracle.py: the official sam2 package, perturbed weights

        official_model, checkpoint = sam2_oracle.official_model("tiny")
        ours = samkit.load_model(str(checkpoint), device="cpu")
        make_official = sam2_oracle.image_predictor
    else:
        oracle.official()
        from segment_anything import SamPredictor as make_official
    if args.model == "vit_b":
        official_model, checkpoint = oracle.official_vit_b()
        ours = samkit.load_model(str(checkpoint), device="cpu")
    elif args.model == "mobile_sam":
        checkpoint = MOBILE_SAM
        ours = samkit.load_model(str(checkpoint), device="cpu")
        official_model = oracle.official_with_encoder(
            ours.image_encoder, torch.load(checkpoint, map_location="cpu", weights_only=True)
        )
    parts = ("decoder",) if args.model == "vit_b" else ("encoder", "decoder")
    with tempfile.TemporaryDirectory(prefix="samkit-bench-onnx-") as tmp:
        export_dir = Path(args.export_dir) if args.export_dir else Path(tmp) / "export"
        if not args.export_dir:
            began = time.perf_counter()
            samkit.export(ours, export_dir, parts=parts, quantize=True)
            log(f"exported {', '.join(parts)} (+ int8 decoder) in {time.perf_counter() - began:.1f} s")
        rows = bench(args, ours, make_official(official_model), export_dir, image, options, parts)
    end = machine(threads)
    head = ["model", "stage", *COLUMNS, "fastest", "check"]
    body = [[args.model, stage, *map(fmt, times), fastest(times), check] for stage, times, check in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    log("")
    log("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in body:
        log("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    if args.markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        text = (
            f"`python benchmarks/bench_onnx.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
            f"{Path(args.image).name} ({width}x{height}), median of {args.repeats} after a warm-up, "
            f"alternating; {'wall-clock' if args.clock == 'wall' else 'process CPU'} times.\n\n"
            f"Machine at start: {start}.  \nAt end: {end}.\n\n" + "\n".join(lines) + "\n"
        )
        Path(args.markdown).write_text(text)
        log(f"\nmarkdown table written to {args.markdown}")


def fastest(times) -> str:
    timed = [(t, name) for t, name in zip(times, COLUMNS) if t is not None]
    best, name = min(timed)
    others = sorted(t for t, _ in timed if t != best)
    return f"{name.split(' (')[0]} ({others[0] / best:.2f}x the next)" if others else name


def bench(args, ours, official, export_dir, image, options, parts):
    """The rows: `official` is the official predictor (SamPredictor, or SAM 2's
    SAM2ImagePredictor) on the same weights as `ours`."""
    height, width = image.shape[:2]
    rows = []
    predictor = samkit.Predictor(ours)
    onnx_fp32 = samkit.OnnxPredictor(export_dir, session_options=options)
    onnx_int8 = samkit.OnnxPredictor(export_dir, quantized=True, session_options=options)

    if "encoder" in parts:
        encoder_repeats = max(1, min(args.repeats, 3))
        times, results = time_alternating({
            "samkit": lambda: predictor.compute_image_state(image).features,
            "onnx": lambda: onnx_fp32.compute_image_state(image).features,
        }, encoder_repeats)
        diff = float(np.abs(results["samkit"].numpy() - results["onnx"]).max())
        rows.append(("image encoder (once per image)", (times["samkit"], None, times["onnx"], None),
                     f"embedding max abs diff {diff:.1e}; median of {encoder_repeats}"))

    log("embedding the image (samkit, official, ONNX) ...")
    ours_state = predictor.compute_image_state(image)
    predictor.set_image_state(ours_state)
    with torch.inference_mode():
        official.set_image(image)
    # the ONNX decoders read our embedding (and SAM 2's high-res maps), so only the decoders differ
    state = samkit.export.onnx_predictor.OnnxImageState(
        ours_state.features.numpy(), ours_state.original_size, ours_state.input_size,
        tuple(t.numpy() for t in ours_state.high_res_features),
    )
    onnx_fp32.set_image_state(state)
    onnx_int8.set_image_state(state)
    point = np.array([[0.45 * width, 0.55 * height]])
    label = np.array([1])

    def official_predict():
        with torch.inference_mode():
            return official.predict(point_coords=point, point_labels=label, multimask_output=True)

    def official_best():
        masks, scores, _ = official_predict()
        best = int(np.argmax(scores))
        return masks[best : best + 1], scores[best : best + 1], None

    times, results = time_alternating({
        "samkit": lambda: predictor.predict(point_coords=point, point_labels=label),
        "official": official_predict,
        "fp32": lambda: onnx_fp32.predict(point_coords=point, point_labels=label),
        "int8": lambda: onnx_int8.predict(point_coords=point, point_labels=label),
    }, args.repeats)
    reference = results["samkit"][0]
    check = "; ".join(f"{name} {ious(results[name][0], reference)}" for name in ("official", "fp32", "int8"))
    rows.append((f"one click, 3 masks at {width}x{height}",
                 (times["samkit"], times["official"], times["fp32"], times["int8"]), check))

    best_kwargs = {"point_coords": point, "point_labels": label, "best_only": True, "return_low_res": False}
    times, results = time_alternating({
        "samkit": lambda: predictor.predict(**best_kwargs),
        "official": official_best,
        "fp32": lambda: onnx_fp32.predict(**best_kwargs),
        "int8": lambda: onnx_int8.predict(**best_kwargs),
    }, args.repeats)
    reference = results["samkit"][0]
    check = "; ".join(f"{name} {ious(results[name][0], reference)}" for name in ("official", "fp32", "int8"))
    rows.append(("one click, best mask only", (times["samkit"], times["official"], times["fp32"], times["int8"]),
                 check))

    if args.model.startswith("sam2"):  # the official SAM 1 ONNX example's graph (orig_im_size) only
        return rows
    feeds = onnx_exports.feeds(state.features, (height, width), point, label)
    import onnxruntime

    sessions = {
        name: onnxruntime.InferenceSession(str(export_dir / file), options, providers=["CPUExecutionProvider"])
        for name, file in (("fp32", "decoder.onnx"), ("int8", "decoder.quant.onnx"))
    }

    def graph(name):
        masks, scores, _ = sessions[name].run(None, feeds)
        return masks[0] > 0, scores[0]

    times, results = time_alternating({name: (lambda n=name: graph(n)) for name in sessions}, args.repeats)
    multi = predictor.predict(point_coords=point, point_labels=label)[0]
    single = predictor.predict(point_coords=point, point_labels=label, multimask_output=False)[0]
    reference = np.concatenate([single, multi])
    check = "; ".join(f"{name} {ious(results[name][0], reference)} (4 masks)" for name in sessions)
    rows.append(("official ONNX usage: 4 masks upscaled in the graph", (None, None, times["fp32"], times["int8"]),
                 check))
    return rows


if __name__ == "__main__":
    main()
