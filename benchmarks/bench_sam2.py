#!/usr/bin/env python
"""samkit's SAM 2.1 against the official sam2 package, side by side, in one run (issue 19).

Same weights (seeded, perturbed random weights in the official checkpoint format: no pretrained
weights exist here), same image, same prompts. Rows, each with the official time, ours and the
ratio, and a check that the outputs agree:

* encoder, Hiera-T and B+: fp32 (``set_image`` on both sides: preprocessing, trunk, neck, the
  high-res projections; same embedding and high-res features checked) and ours in the reduced
  precision (bf16 on a CPU) against the official fp32, with the mask IoU of its masks vs fp32;
* one click, best mask at image size, p50 and p90, for SAM 2.1-T, MobileSAM and ViT-B, measured
  as the Label Studio backend calls it: its one ``samkit.Predictor`` on the shared embedding
  cache, ``set_image`` of the (cached, read-only, PIL-decoded) image,
  ``samkit.segment_objects(..., stability=False)``; the official: ``predict(multimask_output=True)``
  and the best-scoring mask. Timed in runs of 5 consecutive clicks per side (an annotator's
  clicks), and again alternating click by click (each click then starts after the other side's
  has filled the cache with its own data);
* 1024 point prompts, low-res logits (the official decoder in batches of 64, as its generator);
* segment-everything end to end: ``SAM2AutomaticMaskGenerator`` against ``samkit.MaskGenerator``
  driven with the official generator's settings (pred_iou_thresh 0.8, the rest shared with SAM 1);
  masks matched by IoU;
* GIS: megapixels per minute of segment-everything (``samkit.geo.vectorize``) on a square mosaic of
  the shared Kampala GeoTIFF (its 1024x1024 tiled; no shared raster is 4096 px wide), with
  MobileSAM, SAM 2.1-T and ViT-B, each in its own process, with its peak RSS and its RSS as the
  first and the last tile start; and MobileSAM on a raster of half the rows, to show the peak
  RSS stays flat when the raster doubles.

    python benchmarks/bench_sam2.py --markdown benchmarks/results_sam2.md
    python benchmarks/bench_sam2.py --quick      # a miniature run (what tests/core runs)
    python benchmarks/bench_sam2.py --device cuda --low-precision fp16   # benchmarks/gpu_check.sh

Times are medians after a warm-up; ours and the official alternate so that a machine whose speed
drifts slows both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "core"))
sys.path.insert(0, str(REPO / "benchmarks"))

import oracle  # noqa: E402  (tests/core: official packages, seeded weights, record matching)
import sam2_oracle  # noqa: E402  (tests/core: the official sam2 with its torchvision stand-ins)
from bench_core import Row, fmt_time, timeit, timeit_pair  # noqa: E402
import machine_info  # noqa: E402  (benchmarks/: the CPU line)

import samkit  # noqa: E402
from samkit.modeling.sam2.model import build_sam2  # noqa: E402

SHARED = Path(os.environ.get("SAMKIT_SHARED_DIR", REPO.parent / "shared"))
DEFAULT_IMAGE = SHARED / "data" / "images" / "truck.jpg"
GEO_RASTER = SHARED / "data" / "geo" / "fair_oam_kampala_z21_x1238424_y1046544_4x4tiles.tif"
MOBILE_SAM = SHARED / "reference" / "mobile_sam_random" / "mobile_sam_random.pt"
LABELS = {"tiny": "SAM 2.1-T", "base_plus": "SAM 2.1-B+"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE = torch.device("cpu")
# the settings of a full run, and of a miniature one (--quick); flags given override either
FULL = dict(sizes=["tiny", "base_plus"], repeats=2, clicks=30, prompts=1024, points_per_side=16,
            sam1=["mobile_sam", "vit_b"], gis_size=4096, gis_models=["MobileSAM", LABELS["tiny"], "ViT-B"])
QUICK = dict(sizes=["tiny"], repeats=1, clicks=10, prompts=64, points_per_side=4, sam1=["mobile_sam"], gis_size=512,
             gis_models=["MobileSAM", LABELS["tiny"]])


def log(msg: str) -> None:
    print(msg, flush=True)


def synced(fn):
    """fn, followed by a device synchronisation on CUDA (so that the timings hold the work)."""
    if DEVICE.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    return call


def official_call(fn):
    def call():
        with torch.inference_mode():
            return fn()

    return synced(call)


def p50_p90(t) -> str:
    if t.spread is None:
        return f"p50 {t.wall * 1000:.1f} ms"
    return f"p50 {t.wall * 1000:.1f} ms, p90 {t.spread[1] * 1000:.1f} ms"


def mask_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a).reshape(-1, *np.shape(a)[-2:])
    b = np.asarray(b).reshape(-1, *np.shape(b)[-2:])
    return np.array([oracle.mask_iou(x, y) for x, y in zip(a, b)])


def our_sam2(size: str, path: Path, dtype: torch.dtype = torch.float32):
    """samkit's Sam2 with the official checkpoint's weights, on DEVICE, computing in dtype."""
    model = build_sam2(size)
    model.load_official_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"], path)
    model = model.eval().to(DEVICE)
    model.compute_dtype = dtype
    return model


def official_sam2(size: str):
    """(official SAM2Base on DEVICE, checkpoint path) with seeded perturbed weights."""
    model, path = sam2_oracle.official_model(size)
    return model.to(DEVICE), path


# consecutive clicks per side in the click rows' runs
CLICK_RUN = 5
# the precision column's spelling of a click's decoder dtype
PRECISION = {"float32": "fp32", "bfloat16": "bf16 decoder", "float16": "fp16 decoder"}


def click_point(h: int, w: int) -> np.ndarray:
    return np.array([[w * 0.55, h * 0.45]])


# -- rows ---------------------------------------------------------------------------------------


def bench_encoder(size, image, args, rows, low):
    """Encoder fp32 (same embedding) and ours in reduced precision vs the official fp32."""
    label = LABELS[size]
    official, path = official_sam2(size)
    ours = our_sam2(size, path)
    ours_low = our_sam2(size, path, DTYPES[low])
    off_pred = sam2_oracle.image_predictor(official)
    log(f"   {label}: encoder fp32")
    (t_o, t_f), (state, _) = timeit_pair(
        synced(lambda: ours.encode_image(image)), official_call(lambda: off_pred.set_image(image)), args.repeats,
        warmup=0 if args.quick else 1,
    )
    features = off_pred._features
    diff = float((state.features - features["image_embed"]).abs().max())
    diff_hr = max(float((a - b).abs().max()) for a, b in zip(state.high_res_features, features["high_res_feats"]))
    scale = float(features["image_embed"].abs().max())
    rows.append(Row(label, "encoder (set_image)", "fp32", t_o, t_f,
                    f"embedding max abs diff {diff:.1e} (max {scale:.2f}), high-res {diff_hr:.1e}", ">= 1.1x"))
    log(f"   {label}: encoder {low}")
    if args.quick:  # against the official fp32 time above, to save a miniature run two official calls
        t_f2 = t_f
        t_l, state_low = timeit(synced(lambda: ours_low.encode_image(image)), args.repeats, warmup=0)
    else:
        (t_l, t_f2), (state_low, _) = timeit_pair(
            synced(lambda: ours_low.encode_image(image)), official_call(lambda: off_pred.set_image(image)),
            args.repeats,
        )
    # masks of ours in reduced precision (encoder and decoder) against ours in fp32
    h, w = image.shape[:2]
    pts = grid_points(32, h, w)[:, None, :]
    lab = np.ones((len(pts), 1), dtype=np.int64)
    masks = []
    for model, st in ((ours, state), (ours_low, state_low)):
        pred = samkit.Predictor(model)
        pred.set_image_state(st)
        masks.append(pred.predict_batch(point_coords=pts, point_labels=lab, multimask_output=True)[0])
    ious = mask_ious(masks[1], masks[0])
    rows.append(Row(label, "encoder (set_image)", low, t_l, t_f2,
                    f"{t_o.wall / t_l.wall:.2f}x our fp32; masks vs fp32 ({len(ious)}): IoU mean {ious.mean():.4f}, "
                    f"min {ious.min():.4f}", ">= 1.5x official fp32, IoU >= 0.98"))
    return ours, official, off_pred, state, path


def grid_points(n: int, h: int, w: int) -> np.ndarray:
    side = int(round(n**0.5))
    ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], 1) * [w, h]


def label_studio_click(model, image, cache, decoder_dtype="float32"):
    """One click as the Label Studio backend answers it (plugins/label_studio/backend.py): its one
    interactive Predictor on the shared embedding cache, with the click's decoder precision
    (SAMKIT_LS_CLICK_DTYPE), set_image of the image (the backend's cached, read-only decoded
    array), segment_objects without the stability score."""
    h, w = image.shape[:2]
    prompts = [samkit.Prompt(points=click_point(h, w), labels=np.array([1]))]
    predictor = samkit.Predictor(model, cache=cache, decoder_dtype=decoder_dtype)

    def click():
        predictor.set_image(image)
        return samkit.segment_objects(predictor, prompts, stability=False)[0].mask

    return synced(click)


def click_precisions() -> list[str]:
    """The click's decoder precisions timed: float32 (exact), and the Label Studio backend's
    default (SAMKIT_LS_CLICK_DTYPE=auto) where that is another (bfloat16 on a CPU with bfloat16
    dot products)."""
    from samkit.build import resolve_decoder_dtype

    auto = resolve_decoder_dtype("auto", DEVICE)
    return ["float32"] if auto == torch.float32 else ["float32", str(auto).removeprefix("torch.")]


def backend_threads() -> int:
    """The Label Studio backend's PyTorch threads by default (SAMKIT_LS_THREADS unset)."""
    from samkit.label_studio.settings import Settings

    return Settings().torch_threads(DEVICE.type) or torch.get_num_threads()


def bench_click(label, ours, official_predict, image, args, rows):
    """One click's best mask at image size, p50 / p90, ours (as Label Studio: its thread count
    and each click precision of click_precisions) vs the official on as many threads, in runs of
    CLICK_RUN consecutive clicks per side (an annotator's clicks on one image), the runs
    alternating; and, for comparison, alternating click by click, where each side's click starts
    after the other's has filled the cache with its own data."""
    cache = samkit.EmbeddingCache(4)
    samkit.Predictor(ours, cache=cache).set_image(image)  # the image's embedding, computed once
    h, w = image.shape[:2]
    point, one = click_point(h, w), np.array([1])

    def official_best():
        masks, scores, _ = official_predict(point_coords=point, point_labels=one, multimask_output=True)
        return np.asarray(masks[int(np.argmax(scores))], dtype=bool)

    threads, before = backend_threads(), torch.get_num_threads()
    torch.set_num_threads(threads)
    exact = None
    try:
        for precision in click_precisions():
            ours_click, official_click = label_studio_click(ours, image, cache, precision), official_call(official_best)
            (t_o, t_f), (m_o, m_f) = timeit_pair(ours_click, official_click, args.clicks, block=CLICK_RUN)
            (a_o, a_f), _ = timeit_pair(ours_click, official_click, args.clicks)
            differ = int((m_o != m_f).sum())
            exact = m_o if exact is None else exact
            versus_fp32 = "" if m_o is exact else f"; mask IoU vs our fp32 {oracle.mask_iou(m_o, exact):.4f}"
            rows.append(Row(label, f"one click, best mask at {w}x{h}, {threads} thread(s)", PRECISION.get(precision),
                            t_o, t_f, f"ours {p50_p90(t_o)}; official {p50_p90(t_f)} (runs of {CLICK_RUN}); "
                            f"alternating click by click: ours {p50_p90(a_o)}, official {p50_p90(a_f)}; mask IoU vs "
                            f"official {oracle.mask_iou(m_o, m_f):.5f} ({differ} pixels differ){versus_fp32}",
                            "p90 < 20 ms"))
    finally:
        torch.set_num_threads(before)


def bench_sam1_clicks(image, args, rows):
    sam = oracle.official()
    for name in args.sam1:
        log(f"   {name}: one click")
        if name == "vit_b":
            official, path = oracle.official_vit_b()
            ours = samkit.load_model(str(path), device=str(DEVICE))
            official = official.to(DEVICE)
        else:
            ours = samkit.load_model(str(MOBILE_SAM), device=str(DEVICE))
            state_dict = torch.load(MOBILE_SAM, map_location="cpu", weights_only=True)
            official = oracle.official_with_encoder(ours.image_encoder, state_dict).to(DEVICE)
        state = ours.encode_image(image)
        off_pred = sam.SamPredictor(official)
        off_pred.features = state.features.to(DEVICE)
        off_pred.original_size, off_pred.input_size, off_pred.is_image_set = state.original_size, state.input_size, True
        label = {"vit_b": "ViT-B", "mobile_sam": "MobileSAM"}[name]
        bench_click(label, ours, off_pred.predict, image, args, rows)


def bench_prompts(ours, official, off_pred, state, image, n, args, rows):
    """n point prompts, 3 masks each, low-res logits only, on the same embedding."""
    h, w = image.shape[:2]
    pred = samkit.Predictor(ours)
    pred.set_image_state(state)
    coords = torch.as_tensor(ours.to_input_frame(grid_points(n, h, w), state), dtype=torch.float32)[:, None, :]
    coords, labels = coords.to(DEVICE), torch.ones((n, 1), dtype=torch.int32, device=DEVICE)
    features = off_pred._features

    def official_decode():
        lows, ious = [], []
        for s in range(0, n, 64):
            sparse, dense = official.sam_prompt_encoder(points=(coords[s : s + 64], labels[s : s + 64]), boxes=None,
                                                        masks=None)
            low, iou, _, _ = official.sam_mask_decoder(
                image_embeddings=features["image_embed"], image_pe=official.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
                repeat_image=True, high_res_features=features["high_res_feats"],
            )
            lows.append(low)
            ious.append(iou)
        return torch.cat(lows), torch.cat(ious)

    (t_o, t_f), ((low_o, iou_o), (low_f, iou_f)) = timeit_pair(
        synced(lambda: pred.decode_low_res(coords, labels, multimask_output=True)), official_call(official_decode),
        max(1, args.repeats), warmup=0 if args.quick else 1,
    )
    dl = float((low_o - low_f).abs().max() / low_f.abs().max())
    same = float(((low_o > 0) == (low_f > 0)).float().mean())
    rows.append(Row(LABELS["tiny"], f"decoder, {n} prompts (low-res)", "fp32", t_o, t_f,
                    f"max rel diff logits {dl:.1e}, IoU {float((iou_o - iou_f).abs().max()):.1e}; "
                    f"{100 * same:.4f}% low-res pixels equal", ">= 4x"))


def bench_generator(ours, official, image, args, rows):
    """SAM2AutomaticMaskGenerator against samkit.MaskGenerator with the official's settings."""
    sam2_oracle.official_sam2()
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    side = args.points_per_side
    settings = dict(points_per_side=side, pred_iou_thresh=0.8, stability_score_thresh=0.95, box_nms_thresh=0.7)
    log(f"   {LABELS['tiny']}: segment-everything, {side}x{side} points")
    t_o, rec_o = timeit(synced(lambda: samkit.MaskGenerator(ours, **settings).generate(image)), 1, warmup=0)
    t_f, rec_f = timeit(
        official_call(lambda: SAM2AutomaticMaskGenerator(official, points_per_batch=64, **settings).generate(image)),
        1, warmup=0,
    )
    _, problems = oracle.match_records(rec_o, rec_f, "binary_mask")
    check = f"{len(rec_o)} vs {len(rec_f)} masks, " + ("same masks" if not problems else f"{len(problems)} differ")
    rows.append(Row(LABELS["tiny"], f"segment-everything {side}x{side}, end to end", "fp32", t_o, t_f,
                    check + "; samkit.MaskGenerator given the official's settings (pred_iou_thresh 0.8)", ">= 3x"))


# -- GIS ----------------------------------------------------------------------------------------


def mosaic(source: Path, dst: Path, height: int, width: int) -> Path:
    """A GeoTIFF of height x width pixels tiling `source` (same CRS, pixel size and origin)."""
    import rasterio

    with rasterio.open(source) as src:
        data = src.read(indexes=[1, 2, 3])
        profile = src.profile
    reps = (1, -(-height // data.shape[1]), -(-width // data.shape[2]))
    tiled = np.tile(data, reps)[:, :height, :width]
    profile.update(count=3, height=height, width=width, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", photometric="RGB")
    profile.pop("nodata", None)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(tiled)
    return dst


def gis_worker(spec: dict) -> None:
    """In a process of its own: segment-everything over the raster; prints JSON with seconds,
    megapixels per minute, polygons and peak RSS (MB)."""
    global DEVICE
    DEVICE = torch.device(spec["device"])
    from samkit.geo import vectorize
    from samkit.utils.memory import release_freed_memory

    # both thresholds 0: random weights pass few masks through the default thresholds, and a
    # trained model's masks are what vectorising costs; so every point's masks are kept here
    options = {"points_per_side": spec["points_per_side"], "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    if spec["kind"] == "sam2":
        model = our_sam2("tiny", Path(spec["checkpoint"]))
    else:
        model = samkit.load_model(spec["checkpoint"], device=spec["device"])
    # the RSS as each tile starts, freed heap given back first (samkit keeps it for the next
    # call): what the run holds outside a tile's own work, which must not grow with the raster
    between = []

    class Generator(samkit.MaskGenerator):
        def generate(self, image, progress=None):
            release_freed_memory()
            between.append(rss_mb())
            return super().generate(image, progress)

    generator = Generator(model, **options)
    start = time.perf_counter()
    frame = vectorize(spec["raster"], None, generator=generator, tile_size=1024, progress=False, allow_empty=True)
    seconds = time.perf_counter() - start
    megapixels = spec["pixels"] / 1e6
    peak = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "mp_per_min": megapixels / seconds * 60, "polygons": len(frame),
                      "peak_rss_mb": peak, "tiles": len(between),
                      "between_tiles_mb": [between[0], between[-1]] if between else [0, 0]}))


def proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status ("VmRSS", "VmHWM") in MB; None where it is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """This process's resident memory now, in MB (0 where /proc is missing)."""
    return proc_status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: /proc's VmHWM, which starts afresh at exec
    (getrusage's ru_maxrss keeps the forking parent's peak across exec on Linux)."""
    peak = proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_gis(spec: dict) -> dict:
    command = [sys.executable, __file__, "--gis-worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"GIS worker failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_gis(args, sam2_path: Path, rows, gis_rows):
    side = args.gis_size
    workdir = Path(tempfile.mkdtemp(prefix="samkit-bench-gis-"))
    raster = mosaic(GEO_RASTER, workdir / f"mosaic_{side}.tif", side, side)
    half = mosaic(GEO_RASTER, workdir / f"mosaic_{side // 2}x{side}.tif", side // 2, side)
    models = {"MobileSAM": ("sam1", MOBILE_SAM), LABELS["tiny"]: ("sam2", sam2_path),
              "ViT-B": ("sam1", None)}  # ViT-B's perturbed checkpoint is written only when a row needs it
    for label in args.gis_models:
        kind, checkpoint = models[label]
        checkpoint = str(checkpoint if checkpoint is not None else oracle.official_vit_b()[1])
        log(f"   GIS {side}x{side}: {label}")
        spec = dict(kind=kind, checkpoint=checkpoint, raster=str(raster), pixels=side * side, device=str(DEVICE),
                    points_per_side=args.points_per_side)
        got = run_gis(spec)
        gis_rows.append((label, f"{side}x{side}", got))
    log(f"   GIS {side // 2}x{side}: MobileSAM (peak RSS when the raster doubles)")
    got = run_gis(dict(kind="sam1", checkpoint=str(MOBILE_SAM), raster=str(half), pixels=side * side // 2,
                       device=str(DEVICE), points_per_side=args.points_per_side))
    gis_rows.append(("MobileSAM", f"{side}x{side // 2}", got))


def gis_table(gis_rows, points_per_side: int) -> str:
    lines = ["| model | raster | megapixels / min | seconds | polygons | peak RSS | grid | tiles | "
             "RSS between tiles, first -> last |", "|---|---|---|---|---|---|---|---|---|"]
    for label, size, got in gis_rows:
        first, last = got["between_tiles_mb"]
        lines.append(f"| {label} | {size} | {got['mp_per_min']:.2f} | {got['seconds']:.1f} | {got['polygons']} | "
                     f"{got['peak_rss_mb']:.0f} MB | {points_per_side}x{points_per_side} | {got['tiles']} | "
                     f"{first:.0f} -> {last:.0f} MB |")
    return "\n".join(lines)


# -- output -------------------------------------------------------------------------------------


def table(rows) -> str:
    head = ["model", "stage", "precision", "samkit", "official", "speedup", "target", "check"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        speed = f"{r.speedup():.2f}x" if r.speedup() is not None else "n/a"
        out.append("| " + " | ".join([r.model, r.stage, r.precision, fmt_time(r.ours), fmt_time(r.official), speed,
                                      r.target, r.check]) + " |")
    return "\n".join(out)


def machine() -> str:
    """The CPU (machine_info.cpu), the GPU when benchmarking one, torch and the load."""
    gpu = f", {torch.cuda.get_device_name()}" if DEVICE.type == "cuda" else ""
    return (f"{machine_info.cpu()}{gpu}; torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"load average {os.getloadavg()[0]:.2f}")


def main(argv=None) -> None:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=str(DEFAULT_IMAGE))
    # defaults None: filled in below from FULL or, with --quick, QUICK; a flag given always wins
    ap.add_argument("--sizes", nargs="+", choices=sorted(LABELS))
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--clicks", type=int, help="clicks timed per side (p50 / p90; at least 10 for the p90)")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--points-per-side", type=int, help="segment-everything grid (0: no such rows)")
    ap.add_argument("--sam1", nargs="*", choices=["mobile_sam", "vit_b"])
    ap.add_argument("--gis-size", type=int, help="side of the square GIS raster (0: no GIS rows)")
    ap.add_argument("--gis-models", nargs="*")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--low-precision", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--quick", action="store_true",
                    help="a miniature run: Hiera-T only, 1 repeat and no warm-up for the encoder and the prompts, "
                         "10 clicks, 64 prompts, 4x4 points, MobileSAM clicks, a 512x512 GIS raster with MobileSAM "
                         "and SAM 2.1-T (flags given override these)")
    ap.add_argument("--markdown", default="", help="write the tables here as markdown")
    ap.add_argument("--gis-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.gis_worker:
        return gis_worker(json.loads(args.gis_worker))
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    DEVICE = torch.device(args.device)

    # decoded as the Label Studio backend decodes and caches a task's image
    # (plugins/label_studio/images.py): PIL, then read-only
    with Image.open(args.image) as decoded:
        decoded.load()
        image = samkit.load_image(ImageOps.exif_transpose(decoded))
    image.flags.writeable = False
    start = machine()
    log(f"samkit SAM 2.1 benchmark on {Path(args.image).name} ({image.shape[1]}x{image.shape[0]}); {start}")
    rows: list[Row] = []
    gis_rows: list = []

    def emit(final: bool = False) -> None:
        """The tables so far, printed and written (after every stage: a long run cut short keeps
        what it measured)."""
        text = table(rows)
        if gis_rows:
            text += ("\n\nGIS segment-everything (samkit.geo.vectorize, 1024-px tiles, both thresholds 0, one "
                     "process per row):\n\n")
            text += gis_table(gis_rows, args.points_per_side)
        if final:
            log("\n" + text)
        if args.markdown:
            command = " ".join(argv if argv is not None else sys.argv[1:])
            end = machine() if final else "(run not finished)"
            Path(args.markdown).write_text(
                f"# samkit SAM 2.1 vs sam2\n\n`python benchmarks/bench_sam2.py {command}` on {Path(args.image).name} "
                f"({image.shape[1]}x{image.shape[0]}), seeded random weights, device {DEVICE}.\n\n"
                f"Machine at start: {start}.  \nAt end: {end}.\n\n{text}\n"
            )

    tiny = None
    for size in args.sizes:
        found = bench_encoder(size, image, args, rows, args.low_precision)
        emit()
        if size == "tiny":
            tiny = found
    if tiny is None:
        tiny = bench_encoder("tiny", image, args, rows, args.low_precision)
    ours, official, off_pred, state, tiny_path = tiny
    log("   SAM 2.1-T: one click")
    bench_click(LABELS["tiny"], ours, off_pred.predict, image, args, rows)
    bench_sam1_clicks(image, args, rows)
    emit()
    log(f"   SAM 2.1-T: {args.prompts} prompts")
    bench_prompts(ours, official, off_pred, state, image, args.prompts, args, rows)
    emit()
    if args.points_per_side:
        bench_generator(ours, official, image, args, rows)
        emit()
    if args.gis_size:
        bench_gis(args, tiny_path, rows, gis_rows)
    emit(final=True)
    if args.markdown:
        log(f"\nmarkdown written to {args.markdown}")


if __name__ == "__main__":
    main()
