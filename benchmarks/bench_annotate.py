#!/usr/bin/env python
"""Auto-annotation: samkit.auto_annotate against the official pipeline on the same boxes, in one run.

Both sides get the same images (the shared photos), the same boxes (hand boxes around their
objects, a COCO JSON), the same SAM weights (ViT-B with seeded random weights, perturbed as in
tests/core/oracle.py, or --checkpoint), and write YOLO segmentation labels:

* official: segment_anything's SamPredictor, one image at a time: read the image (OpenCV),
  set_image, all its boxes in one predict_torch call with multimask_output=False (what
  Ultralytics' auto_annotate does with its SAM), then per mask cv2.findContours (external, simple
  chain), the largest contour, normalised, one line per box;
* samkit: samkit.auto_annotate(images, boxes.json, sam_model=the same weights, format="yolo",
  holes=False, pieces="largest": the same shapes, the largest piece's outline), in float32 and
  with dtype="bfloat16" (the image encoder, which dominates with a few boxes an image, then takes
  about half the time on a CPU with bf16 support).

Model loading is outside both timings. The two sides run alternately `--repeats` times; the
table shows the median images per minute and the ratio, and checks that both wrote the same
objects (mean IoU of the rasterised polygons).

A second run checks memory over a long folder: `--long N` distinct images (crops and flips of
the photos, each with boxes) through samkit.auto_annotate with MobileSAM (seeded) and COCO output
(the journal path), sampling the process's resident memory; the table shows it after the first
tenth of the images and at the end.

    python benchmarks/bench_annotate.py                       # 2 repeats, --long 200
    python benchmarks/bench_annotate.py --repeats 1 --long 0  # speed only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "core"))

import oracle  # noqa: E402  (tests/core/oracle.py: the official package without torchvision, seeded ViT-B)

import samkit  # noqa: E402
import machine_info  # noqa: E402  (benchmarks/machine_info.py: the CPU line)

SHARED = Path(os.environ.get("SAMKIT_SHARED_DIR", REPO.parent / "shared"))
IMAGES = SHARED / "data" / "images"
MOBILE_SAM = SHARED / "reference" / "mobile_sam_random" / "mobile_sam_random.pt"
# Hand boxes (relative x, y, w, h) around objects of the shared photos (as tests/fiftyone/fo_checks.py).
BOXES = {
    "truck.jpg": [[0.04, 0.22, 0.92, 0.50]],
    "dog.jpg": [[0.08, 0.10, 0.55, 0.85]],
    "dogs.jpg": [[0.03, 0.05, 0.45, 0.93], [0.50, 0.10, 0.47, 0.88]],
    "groceries.jpg": [[0.30, 0.15, 0.40, 0.80]],
    "picture1.jpg": [[0.20, 0.20, 0.60, 0.60]],
    "picture2.jpg": [[0.10, 0.30, 0.50, 0.50]],
    "bus.jpg": [[0.00, 0.20, 1.00, 0.55], [0.05, 0.40, 0.25, 0.50]],
}


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{machine_info.cpu()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"load average {load:.2f}")


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "?"


def make_inputs(folder: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """images/ with the photos, boxes.json (COCO), and the boxes in pixels per file name."""
    images = folder / "images"
    images.mkdir(parents=True)
    doc = {"images": [], "annotations": [], "categories": [{"id": 0, "name": "object"}]}
    pixel_boxes = {}
    for image_id, (name, boxes) in enumerate(sorted(BOXES.items()), 1):
        shutil.copy(IMAGES / name, images / name)
        height, width = samkit.load_image(images / name).shape[:2]
        doc["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        rows = []
        for x, y, w, h in boxes:
            box = [round(x * width), round(y * height), round(w * width), round(h * height)]
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": 0,
                                       "bbox": box})
            rows.append([box[0], box[1], box[0] + box[2], box[1] + box[3]])
        pixel_boxes[name] = np.array(rows, dtype=float)
    (folder / "boxes.json").write_text(json.dumps(doc))
    return images, folder / "boxes.json", pixel_boxes


def official_pipeline(predictor, images: Path, boxes: dict[str, np.ndarray], out: Path) -> None:
    """The official predictor as Ultralytics' auto_annotate uses a SAM: per image, all boxes in one
    call, one mask each, contours to one polygon per box."""
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(boxes):
        image = cv2.cvtColor(cv2.imread(str(images / name)), cv2.COLOR_BGR2RGB)
        height, width = image.shape[:2]
        predictor.set_image(image)
        prompt = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes[name], dtype=torch.float),
                                                       image.shape[:2])
        with torch.inference_mode():
            masks, _, _ = predictor.predict_torch(None, None, boxes=prompt, multimask_output=False)
        lines = []
        for mask in masks[:, 0].cpu().numpy().astype(np.uint8):
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            if not contours:
                continue
            ring = max(contours, key=cv2.contourArea).reshape(-1, 2) / [width, height]
            lines.append("0 " + " ".join(f"{v:.6f}" for v in ring.ravel()))
        (out / f"{Path(name).stem}.txt").write_text("".join(line + "\n" for line in lines))


def polygons(path: Path, width: int, height: int) -> list[np.ndarray]:
    out = []
    for line in path.read_text().splitlines():
        xy = np.array(line.split()[1:], dtype=float).reshape(-1, 2) * [width, height]
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(xy).astype(np.int32)], 1)
        out.append(mask.astype(bool))
    return out


def agreement(images: Path, ours: Path, theirs: Path) -> tuple[float, int, int]:
    ious, count_ours, count_theirs = [], 0, 0
    for image in sorted(images.iterdir()):
        height, width = samkit.load_image(image).shape[:2]
        a = polygons(ours / f"{image.stem}.txt", width, height)
        b = polygons(theirs / f"{image.stem}.txt", width, height)
        count_ours, count_theirs = count_ours + len(a), count_theirs + len(b)
        for x, y in zip(a, b):
            union = np.logical_or(x, y).sum()
            ious.append(np.logical_and(x, y).sum() / union if union else 1.0)
    return float(np.mean(ious)), count_ours, count_theirs


def speed(args, work: Path) -> list[list[str]]:
    images, boxes_json, boxes = make_inputs(work / "speed")
    sam = oracle.official()
    if args.checkpoint:
        official_model = sam.sam_model_registry["vit_b"](checkpoint=args.checkpoint).eval()
        checkpoint = args.checkpoint
    else:
        official_model, checkpoint = oracle.official_vit_b()
    official = sam.SamPredictor(official_model)
    ours = samkit.load_model(checkpoint, device="cpu")
    ours_bf16 = samkit.load_model(checkpoint, device="cpu", dtype="bfloat16")
    models = {"samkit": ours, "samkit-bf16": ours_bf16}
    n = len(boxes)
    log(f"speed: {n} images, {sum(len(b) for b in boxes.values())} boxes, ViT-B")
    # warm-up: one image each (first calls allocate)
    first = sorted(boxes)[:1]
    official_pipeline(official, images, {k: boxes[k] for k in first}, work / "warm-official")
    with warnings.catch_warnings():  # the other images' boxes are not used: expected here
        warnings.simplefilter("ignore")
        for side, model in models.items():
            samkit.auto_annotate(images / first[0], boxes_json, sam_model=model, output_dir=work / f"warm-{side}",
                                 progress=False)
    times: dict[str, list[float]] = {"official": [], "samkit": [], "samkit-bf16": []}
    cpu: dict[str, list[float]] = {side: [] for side in times}
    sides = list(times)
    for repeat in range(args.repeats):
        for side in sides[::-1] if repeat % 2 else sides:
            out = work / f"{side}-{repeat}"
            start, start_cpu = time.perf_counter(), time.process_time()
            if side == "official":
                official_pipeline(official, images, boxes, out)
            else:
                samkit.auto_annotate(images, boxes_json, sam_model=models[side], output_dir=out, progress=False,
                                     holes=False, pieces="largest")
            times[side].append(time.perf_counter() - start)
            cpu[side].append(time.process_time() - start_cpu)
            log(f"  {side}: {times[side][-1]:.1f} s, {cpu[side][-1]:.1f} s CPU")
    t_theirs, c_theirs = statistics.median(times["official"]), statistics.median(cpu["official"])
    rows = []
    for side, precision in (("samkit", "fp32"), ("samkit-bf16", "bf16")):
        mean_iou, count_ours, count_theirs = agreement(images, work / f"{side}-0", work / "official-0")
        t_ours, c_ours = statistics.median(times[side]), statistics.median(cpu[side])
        rows.append([f"ViT-B, YOLO labels from boxes, samkit {precision} vs official fp32", f"{n}",
                     f"{60 * n / t_ours:.1f} ({t_ours:.1f} s)", f"{60 * n / t_theirs:.1f} ({t_theirs:.1f} s)",
                     f"{t_theirs / t_ours:.2f}x", f"{c_theirs / c_ours:.2f}x ({c_ours:.0f} / {c_theirs:.0f} s)",
                     f"{count_ours} / {count_theirs} objects; mean polygon IoU with the official {mean_iou:.3f}"])
    return rows


def long_folder(args, work: Path) -> list[list[str]]:
    """N distinct images (crops and flips of the photos) with two boxes each, through
    auto_annotate (MobileSAM, COCO output); resident memory sampled every 0.2 s."""
    import psutil

    folder = work / "long" / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    photos = [samkit.load_image(IMAGES / name) for name in sorted(BOXES)]
    doc = {"images": [], "annotations": [], "categories": [{"id": 0, "name": "object"}]}
    for i in range(args.long):
        image = photos[i % len(photos)]
        height, width = image.shape[:2]
        y0, x0 = int(rng.integers(0, height // 4)), int(rng.integers(0, width // 4))
        crop = image[y0:y0 + 3 * height // 4, x0:x0 + 3 * width // 4]
        crop = crop[:, ::-1] if i % 2 else crop
        name = f"{i:06d}.jpg"
        cv2.imwrite(str(folder / name), cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGR))
        h, w = crop.shape[:2]
        doc["images"].append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for box in ([w * 0.1, h * 0.1, w * 0.5, h * 0.6], [w * 0.45, h * 0.3, w * 0.5, h * 0.6]):
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i + 1, "category_id": 0,
                                       "bbox": box})
    boxes = work / "long" / "boxes.json"
    boxes.write_text(json.dumps(doc))
    model = samkit.load_model(MOBILE_SAM, device="cpu")
    process = psutil.Process()
    samples: list[tuple[float, int, int]] = []  # time, rss, label files done
    journal = work / "long" / "out" / ".samkit-annotate" / "coco.jsonl"
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            done = sum(1 for _ in open(journal, "rb")) if journal.exists() else 0
            samples.append((time.perf_counter(), process.memory_info().rss, done))
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    summary = samkit.auto_annotate(folder, boxes, sam_model=model, output_dir=work / "long" / "out", format="coco",
                                   progress=False)
    stop.set()
    thread.join()
    elapsed = time.perf_counter() - start
    tenth = [rss for _, rss, done in samples if done >= max(1, args.long // 10)]
    early, late = (tenth[0] if tenth else samples[0][1]), max(rss for _, rss, _ in samples)
    end = samples[-1][1]
    size = (work / "long" / "out" / "annotations.json").stat().st_size
    return [["MobileSAM, COCO output, long folder", f"{args.long}", f"{60 * summary.done / elapsed:.1f}", "-", "-", "-",
             f"RSS after {args.long // 10} images {early / 2**20:.0f} MiB, peak {late / 2**20:.0f} MiB, at the end "
             f"{end / 2**20:.0f} MiB; {summary.objects} objects, annotations.json {size / 2**20:.1f} MiB"]]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--long", type=int, default=200, help="images in the memory run (0: skip it)")
    ap.add_argument("--checkpoint", help="an official ViT-B checkpoint (default: seeded random weights)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--markdown", default="", help="also write the table as markdown to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = machine()
    log(f"bench_annotate at {commit()}; {start}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="samkit-bench-annotate-") as tmp:
        rows += speed(args, Path(tmp))
        if args.long:
            rows += long_folder(args, Path(tmp))
    end = machine()
    head = ["run", "images", "samkit images/min", "official images/min", "speedup", "speedup (CPU time)", "check"]
    table = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    text = (f"`python benchmarks/bench_annotate.py {' '.join(argv if argv is not None else sys.argv[1:])}` at commit "
            f"{commit()}, median of {args.repeats} alternating runs after a one-image warm-up.\n\n"
            f"Machine at start: {start}.  \nAt end: {end}.\n\n" + "\n".join(table) + "\n")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
