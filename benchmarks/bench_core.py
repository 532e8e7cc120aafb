#!/usr/bin/env python
"""samkit against the official segment-anything package, side by side, in one run.

Same weights, same image, same prompts. For each model it times

* the image encoder, fp32 and bf16 (the official one under bf16 autocast; it has no bf16 path
  of its own), and checks the embeddings agree;
* the prompt encoder + mask decoder for 1, 64 and 1024 point prompts (the official decoder in
  batches of 64, as its generator runs it), low-res logits only, on the same embedding, and
  checks the outputs agree;
* one interactive prompt after the embedding exists (`predict`, masks at image size);
* segment-everything end to end (`MaskGenerator` vs `SamAutomaticMaskGenerator`, default
  parameters), fp32, and ours in bf16 (the official generator fails under a global bf16
  autocast), and checks both return the same masks;
* the mask IoU of bf16 against fp32 on 64 point prompts and 16 boxes.

No pretrained weights are needed: without --checkpoint, ViT-B gets seeded random weights with
every tensor perturbed (tests/core/oracle.py) and MobileSAM the seeded checkpoint in
../shared/reference. The official package has no TinyViT: for MobileSAM the official side is the
official decoder and generator around samkit's TinyViT, and the encoder row has no official time.

    python benchmarks/bench_core.py                 # ViT-B and MobileSAM, 3 repeats
    python benchmarks/bench_core.py --quick         # a smaller run (1 repeat, 256 prompts, 16x16 grid)
    python benchmarks/bench_core.py --model vit_b --repeats 5 --markdown benchmarks/RESULTS.md

Times are the median of the repeats after one warm-up call (long official stages run once); where
both sides are timed, their calls alternate so that a machine whose speed drifts slows both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "core"))

import oracle  # noqa: E402  (tests/core/oracle.py: official package import, weights, matching)

import samkit  # noqa: E402
from samkit.predictor import ImageState  # noqa: E402
import machine_info  # noqa: E402  (benchmarks/machine_info.py: the CPU line)

SHARED = Path(os.environ.get("SAMKIT_SHARED_DIR", REPO.parent / "shared"))
DEFAULT_IMAGE = SHARED / "data" / "images" / "truck.jpg"
MOBILE_SAM = SHARED / "reference" / "mobile_sam_random" / "mobile_sam_random.pt"
LONG = 20.0  # seconds: an official stage this long is timed once, not `repeats` times
INTERACTIVE_REPEATS = 30  # one prompt, one click: milliseconds each, so the median of many


class Timing:
    """Wall-clock and process CPU seconds of one measured stage; for stages timed many times,
    also the 10th and 90th percentiles of the wall-clock times (how far the VM drifted)."""

    def __init__(self, wall: float, cpu: float, spread: tuple[float, float] | None = None):
        self.wall, self.cpu, self.spread = wall, cpu, spread


def median_timing(samples: list[Timing]) -> Timing:
    """The medians of several timings, with the wall-clock spread when there are 10 or more."""
    walls = [t.wall for t in samples]
    spread = None
    if len(walls) >= 10:
        deciles = statistics.quantiles(walls, n=10)
        spread = (deciles[0], deciles[-1])
    return Timing(statistics.median(walls), statistics.median(t.cpu for t in samples), spread)


def fmt_spread(t: Timing) -> str:
    """'p10-p90 a-b ms' of a timing's wall-clock times, or '' when it has none."""
    if t.spread is None:
        return ""
    return f"p10-p90 {t.spread[0] * 1000:.1f}-{t.spread[1] * 1000:.1f} ms"


class Row:
    def __init__(self, model, stage, precision, ours, official, check="", target=""):
        self.model, self.stage, self.precision = model, stage, precision
        self.ours, self.official, self.check, self.target = ours, official, check, target

    def speedup(self, clock="wall"):
        if self.ours is None or self.official is None:
            return None
        return getattr(self.official, clock) / getattr(self.ours, clock)


def fmt_time(t, clock="wall"):
    if t is None:
        return "n/a"
    seconds = getattr(t, clock)
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def timeit(fn, repeats, warmup=1, long=LONG):
    """Median wall and CPU time of fn() over `repeats` calls after `warmup` calls; a call longer
    than `long` seconds during warm-up counts as the measurement (no more calls)."""
    result = None
    for _ in range(warmup):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        first = Timing(time.perf_counter() - t0, time.process_time() - c0)
        if first.wall > long:
            return first, result
    samples = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        samples.append(Timing(time.perf_counter() - t0, time.process_time() - c0))
    return median_timing(samples), result


def timeit_pair(ours_fn, official_fn, repeats, warmup=1, long=LONG, block=1):
    """Ours and the official timed in alternation (ours, official, ours, ...), so that a machine
    whose speed drifts during the run slows both sides alike; otherwise as timeit (medians; a
    stage longer than `long` in warm-up is measured by that call alone). block: calls per turn
    (ours `block` times in a row, then the official `block` times, ...), for work whose
    consecutive calls are what a user meets, such as an annotator's clicks on one image.
    Returns ((ours Timing, official Timing), (ours result, official result))."""
    fns = (ours_fn, official_fn)
    results = [None, None]
    samples: list[list[Timing]] = [[], []]
    finished = [False, False]

    def run(i):
        t0, c0 = time.perf_counter(), time.process_time()
        results[i] = fns[i]()
        return Timing(time.perf_counter() - t0, time.process_time() - c0)

    for _ in range(warmup):
        for i in (0, 1):
            first = run(i)
            if first.wall > long:
                samples[i].append(first)
                finished[i] = True
    for start in range(0, repeats, block):
        for i in (0, 1):
            for _ in range(min(block, repeats - start)):
                if not finished[i]:
                    samples[i].append(run(i))
    return tuple(median_timing(s) for s in samples), tuple(results)


def official_call(fn, bf16=False):
    """fn run as the official code is run here: inference mode, bf16 autocast if asked."""

    def call():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return fn()

    return call


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------


def build_models(name, checkpoint):
    """(ours fp32, ours bf16, official fp32 or None, official-with-our-encoder or None, path)."""
    sam = oracle.official()
    if name == "vit_b":
        if checkpoint:
            path = Path(checkpoint)
            official = sam.sam_model_registry["vit_b"]()
            official.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            official.eval()
        else:
            official, path = oracle.official_vit_b()
        ours = samkit.load_model(str(path), device="cpu")
        ours_bf16 = samkit.load_model(str(path), device="cpu", dtype=torch.bfloat16)
        return ours, ours_bf16, official, official, path
    path = Path(checkpoint) if checkpoint else MOBILE_SAM
    ours = samkit.load_model(str(path), device="cpu")
    ours_bf16 = samkit.load_model(str(path), device="cpu", dtype=torch.bfloat16)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    hybrid = oracle.official_with_encoder(ours.image_encoder, state_dict)
    return ours, ours_bf16, None, hybrid, path


def grid_points(n, h, w):
    side = int(round(n**0.5))
    if side * side == n:
        ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
        pts = np.stack([xs.ravel(), ys.ravel()], 1)
    else:
        pts = np.random.default_rng(0).uniform(0.02, 0.98, (n, 2))
    return pts * [w, h]


def mask_ious(a, b):
    a = a.reshape(-1, *a.shape[-2:])
    b = b.reshape(-1, *b.shape[-2:])
    return np.array([oracle.mask_iou(x, y) for x, y in zip(a, b)])


def mask_agreement(a, b):
    """'mask IoU vs official' and how many of the pixels differ."""
    differ = int((np.asarray(a) != np.asarray(b)).sum())
    return f"mask IoU vs official {mask_ious(a, b).min():.5f} ({differ} of {np.asarray(b).size} pixels differ)"


def bench_model(name, args, image, rows):
    sam = oracle.official()
    log(f"\n== {name}: building models")
    ours, ours_bf16, official, hybrid, path = build_models(name, args.checkpoint)
    h, w = image.shape[:2]
    label = {"vit_b": "ViT-B", "mobile_sam": "MobileSAM"}[name]

    # the official pre-processing gives the encoder input both sides get
    off_pred = sam.SamPredictor(hybrid)
    resized = off_pred.transform.apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
    x = hybrid.preprocess(x.float())
    input_size = tuple(resized.shape[:2])

    # -- encoder ----------------------------------------------------------------------------
    log("   encoder fp32")
    t_off = None
    if official is not None:
        (t_ours, t_off), (emb_ours, emb_off) = timeit_pair(
            lambda: ours.embed_image(x), official_call(lambda: official.image_encoder(x)), args.repeats
        )
        diff = float((emb_ours - emb_off).abs().max())
        check = f"max abs diff {diff:.1e} (embedding max {float(emb_off.abs().max()):.2f})"
    else:
        t_ours, emb_ours = timeit(lambda: ours.embed_image(x), args.repeats)
        emb_off = emb_ours
        check = "official has no TinyViT; parity vs the reference fixture is in the tests"
    rows.append(Row(label, "image encoder", "fp32", t_ours, t_off, check, ">= 1.3x" if official else ""))

    log("   encoder bf16")
    t_off_bf = None
    if official is not None:
        (t_ours_bf, t_off_bf), (emb_bf, _) = timeit_pair(
            lambda: ours_bf16.embed_image(x), official_call(lambda: official.image_encoder(x), bf16=True), args.repeats
        )
    else:
        t_ours_bf, emb_bf = timeit(lambda: ours_bf16.embed_image(x), args.repeats)
    rel = float((emb_bf.float() - emb_ours).abs().max() / emb_ours.abs().max())
    rows.append(
        Row(label, "image encoder", "bf16", t_ours_bf, t_off_bf,
            f"{t_ours.wall / t_ours_bf.wall:.2f}x our fp32"
            + (f", {t_off.wall / t_ours_bf.wall:.2f}x official fp32" if t_off else "")
            + f"; max rel diff vs fp32 {rel:.1e}", ">= 2x official fp32" if official else "")
    )

    # -- decoder ----------------------------------------------------------------------------
    features = emb_off.float()  # the same embedding for both decoders
    pred = samkit.Predictor(ours)
    pred.set_image_state(ImageState(features, (h, w), input_size))
    pe = hybrid.prompt_encoder

    def official_decode(coords, labels):
        lows, ious = [], []
        with torch.inference_mode():
            for s in range(0, len(coords), 64):
                sparse, dense = pe(points=(coords[s : s + 64], labels[s : s + 64]), boxes=None, masks=None)
                low, iou = hybrid.mask_decoder(
                    image_embeddings=features, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense, multimask_output=True,
                )
                lows.append(low)
                ious.append(iou)
        return torch.cat(lows), torch.cat(ious)

    for n in args.prompts:
        log(f"   decoder {n} prompts")
        pts = grid_points(n, h, w)
        coords = torch.as_tensor(off_pred.transform.apply_coords(pts, (h, w)), dtype=torch.float)[:, None, :]
        labels = torch.ones((n, 1), dtype=torch.int)
        # a single prompt takes milliseconds on a VM whose speed drifts: take the median of many
        interactive = max(args.interactive_repeats, args.repeats)
        reps = interactive if n == 1 else args.repeats if n <= 64 else max(1, args.repeats // 2)
        (t_o, t_f), ((low_o, iou_o), (low_f, iou_f)) = timeit_pair(
            lambda: pred.decode_low_res(coords, labels, multimask_output=True),
            lambda: official_decode(coords, labels), reps,
        )
        dl = float((low_o - low_f).abs().max())
        di = float((iou_o - iou_f).abs().max())
        same = float(((low_o > 0) == (low_f > 0)).float().mean())
        spread = f"; ours {fmt_spread(t_o)}" if t_o.spread else ""
        rows.append(
            Row(label, f"decoder, {n} prompt{'s' if n > 1 else ''}", "fp32", t_o, t_f,
                f"max abs diff logits {dl:.1e}, IoU {di:.1e}; {100 * same:.4f}% low-res pixels equal{spread}",
                ">= 4x" if n == 1024 else ("< 20 ms" if n == 1 else ""))
        )

    # -- interactive prompt -----------------------------------------------------------------
    log("   interactive prompt")
    off_pred.features = features
    off_pred.original_size, off_pred.input_size, off_pred.is_image_set = (h, w), input_size, True
    point = np.array([[w * 0.55, h * 0.45]])
    one = np.array([1])
    (t_o, t_f), ((m_o, _, _), (m_f, _, _)) = timeit_pair(
        lambda: pred.predict(point_coords=point, point_labels=one),
        official_call(lambda: off_pred.predict(point_coords=point, point_labels=one)),
        max(args.interactive_repeats, args.repeats),
    )
    rows.append(
        Row(label, f"one prompt, 3 masks at {w}x{h}", "fp32", t_o, t_f,
            f"{mask_agreement(m_o, m_f)}; masks upscaled and thresholded; ours {fmt_spread(t_o)}", "< 20 ms")
    )

    def official_best():
        masks, scores, _ = off_pred.predict(point_coords=point, point_labels=one)
        return masks[np.argmax(scores)][None]

    # What an annotator's click gets (the Label Studio backend): the best of the 3 masks.
    def click():
        return pred.predict(point_coords=point, point_labels=one, best_only=True, return_low_res=False)

    (t_o, t_f), ((m_o, _, _), m_f) = timeit_pair(
        click, official_call(official_best), max(args.interactive_repeats, args.repeats)
    )
    rows.append(
        Row(label, f"one click, best mask at {w}x{h}", "fp32", t_o, t_f,
            f"{mask_agreement(m_o, m_f)}; best_only=True, return_low_res=False (the Label Studio backend's call) "
            f"vs official predict + argmax; ours {fmt_spread(t_o)}",
            "< 20 ms")
    )
    # The same click repeated with nothing in between (an annotator's next clicks on one image):
    # above, each of our calls follows an official one, which leaves little of our per-image
    # decoder data in the CPU's cache.
    t_rep, (m_rep, _, _) = timeit(click, max(args.interactive_repeats, args.repeats))
    rows.append(
        Row(label, "one click, repeated (no official call between)", "fp32", t_rep, None,
            f"same mask as the click above: {bool(np.array_equal(m_rep, m_o))}; ours {fmt_spread(t_rep)}", "< 20 ms")
    )

    # -- bf16 vs fp32 masks -----------------------------------------------------------------
    log("   bf16 vs fp32 masks")
    pred32 = samkit.Predictor(ours)
    pred32.set_image_state(ImageState(emb_ours.float(), (h, w), input_size))
    pred16 = samkit.Predictor(ours_bf16)
    pred16.set_image_state(ImageState(emb_bf.float(), (h, w), input_size))
    pts = grid_points(args.mask_points, h, w)[:, None, :]
    lab = np.ones((args.mask_points, 1), dtype=np.int64)
    rng = np.random.default_rng(5)
    x0, y0 = rng.uniform(0, 0.6 * w, 16), rng.uniform(0, 0.6 * h, 16)
    boxes = np.stack([x0, y0, x0 + rng.uniform(50, 0.4 * w, 16), y0 + rng.uniform(50, 0.4 * h, 16)], 1)
    ious = []
    for kw in (dict(point_coords=pts, point_labels=lab, multimask_output=True), dict(boxes=boxes)):
        m32 = pred32.predict_batch(**kw)[0]
        m16 = pred16.predict_batch(**kw)[0]
        ious.append(mask_ious(m16, m32))
    ious = np.concatenate(ious)
    rows.append(
        Row(label, f"masks bf16 vs fp32 ({len(ious)} masks)", "bf16", None, None,
            f"mask IoU mean {ious.mean():.4f}, min {ious.min():.4f}, 5th pct {np.percentile(ious, 5):.4f}",
            "IoU >= 0.98")
    )

    # -- segment everything ----------------------------------------------------------------
    gen_kw = dict(points_per_side=args.points_per_side)
    log(f"   MaskGenerator end to end ({args.points_per_side}x{args.points_per_side} grid)")
    t_o, rec_o = timeit(lambda: samkit.MaskGenerator(ours, **gen_kw).generate(image), 1, warmup=0)
    t_f, rec_f = timeit(lambda: sam.SamAutomaticMaskGenerator(hybrid, **gen_kw).generate(image), 1, warmup=0)
    _, problems = oracle.match_records(rec_o, rec_f, "binary_mask")
    check = f"{len(rec_o)} vs {len(rec_f)} masks, " + ("same masks" if not problems else f"{len(problems)} differ")
    rows.append(Row(label, "MaskGenerator, default params", "fp32", t_o, t_f, check, ">= 3x"))

    log("   MaskGenerator end to end, bf16")
    t_b, rec_b = timeit(lambda: samkit.MaskGenerator(ours_bf16, **gen_kw).generate(image), 1, warmup=0)
    rows.append(Row(label, "MaskGenerator, default params", "bf16", t_b, t_f,
                    f"{len(rec_b)} masks (official fp32 {len(rec_f)}); official fails under bf16 autocast"))

    if args.thresholds_zero:
        kw0 = dict(gen_kw, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        log("   MaskGenerator end to end, thresholds 0")
        t_o, rec_o = timeit(lambda: samkit.MaskGenerator(ours, **kw0).generate(image), 1, warmup=0)
        t_f, rec_f = timeit(lambda: sam.SamAutomaticMaskGenerator(hybrid, **kw0).generate(image), 1, warmup=0)
        _, problems = oracle.match_records(rec_o, rec_f, "binary_mask")
        check = f"{len(rec_o)} vs {len(rec_f)} masks, " + ("same masks" if not problems else f"{len(problems)} differ")
        rows.append(Row(label, "MaskGenerator, thresholds 0", "fp32", t_o, t_f, check))


def table(rows, markdown=False, clock="wall"):
    other = "cpu" if clock == "wall" else "wall"
    head = ["model", "stage", "precision", "samkit", "official", "speedup", f"speedup ({other} time)", "target",
            "check"]
    body = []
    for r in rows:
        sp = f"{r.speedup(clock):.2f}x" if r.speedup() is not None else "n/a"
        spo = f"{r.speedup(other):.2f}x" if r.speedup() is not None else "n/a"
        body.append([r.model, r.stage, r.precision, fmt_time(r.ours, clock), fmt_time(r.official, clock), sp, spo,
                     r.target, r.check])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(wd) for x, wd in zip(head, widths))]
    lines.append("  ".join("-" * wd for wd in widths))
    lines += ["  ".join(str(x).ljust(wd) for x, wd in zip(row, widths)) for row in body]
    return "\n".join(lines)


def machine():
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{machine_info.cpu()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"load average {load:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["vit_b", "mobile_sam", "all"], default="all")
    ap.add_argument("--checkpoint", help="an official checkpoint file (default: seeded random weights)")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, nargs="+", default=[1, 64, 1024])
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--interactive-repeats", type=int, default=INTERACTIVE_REPEATS,
                    help="calls timed for a single prompt or click (at least 10 for the p10-p90 spread)")
    ap.add_argument("--mask-points", type=int, default=64,
                    help="point prompts (3 masks each) of the bf16 vs fp32 mask check, beside its 16 boxes")
    ap.add_argument("--thresholds-zero", action="store_true",
                    help="also time segment-everything with both thresholds at 0 (official: minutes)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 1/64/256 prompts, a 16x16 grid")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="which clock the time columns show: wall, or this process's CPU time (steadier on a "
                         "shared machine, best with --threads 1)")
    ap.add_argument("--markdown", default=str(REPO / "benchmarks" / "RESULTS.md"),
                    help="write the table here as markdown ('' to skip)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.prompts, args.points_per_side = 1, [1, 64, 256], 16
    if args.checkpoint and args.model == "all":
        ap.error("--checkpoint needs --model vit_b or --model mobile_sam")
    if args.threads:
        torch.set_num_threads(args.threads)

    image = samkit.load_image(args.image)
    start = machine()
    log(f"samkit benchmark on {Path(args.image).name} ({image.shape[1]}x{image.shape[0]}); {start}")
    rows: list[Row] = []
    models = ["vit_b", "mobile_sam"] if args.model == "all" else [args.model]
    for name in models:
        bench_model(name, args, image, rows)
    end = machine()
    print()
    print(table(rows, clock=args.clock))
    if args.markdown:
        weights = "seeded random weights" if not args.checkpoint else Path(args.checkpoint).name
        text = (
            f"# samkit vs segment-anything\n\n"
            f"`python benchmarks/bench_core.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
            f" on {Path(args.image).name} ({image.shape[1]}x{image.shape[0]}), {weights}, "
            f"median of {args.repeats} after a warm-up (single prompt and click: of "
            f"{max(args.interactive_repeats, args.repeats)}; official stages over {LONG:.0f} s once).\n\n"
            f"Machine at start: {start}.  \nAt end: {end}.\n\n"
            + f"Times: {'wall clock' if args.clock == 'wall' else 'process CPU time'}.\n\n"
            + table(rows, markdown=True, clock=args.clock) + "\n"
        )
        Path(args.markdown).write_text(text)
        log(f"\nmarkdown table written to {args.markdown}")


if __name__ == "__main__":
    main()
