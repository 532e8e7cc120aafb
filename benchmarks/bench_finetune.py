#!/usr/bin/env python
"""Fine-tuning speed and memory, samkit against the official segment-anything modules.

Three measurements, in one run:

* **training step**: one optimiser step's forward and backward (samkit.finetune's prompt
  simulation and loss) on a cached embedding, for B objects prompted by boxes (one mask) and by
  single points (three masks), through samkit's trained modules and through the official
  PromptEncoder + MaskDecoder with the same weights, timed in alternation; the losses must agree;
  the same for SAM 2.1 (tiny's decoder, samkit's Sam2Family with samkit's modules and with the
  official sam2 `sam_prompt_encoder` / `sam_mask_decoder`, high-res features included);
* **an epoch**: a real `samkit.finetune` run on the Kampala chips (MobileSAM teacher labels,
  tests/finetune_data.py), default prompt iterations: seconds per epoch, images and objects
  per second (the embeddings already on disk, as from the second epoch on);
* **memory**: the peak resident memory of whole runs (a child process each: embedding, one
  epoch, validation, writing) over `--memory-masks` objects and over a tenth of them (at least
  40; or `--memory-small`), 8 per 600 x 600 crop of the Kampala mosaic, box prompts, 8 objects
  per step: embeddings stay on disk, so the peak must not grow with the data. (A step's peak
  grows with the objects it decodes at once, at most the batch size; with mixed prompts and
  images a long run meets that worst case and a short one may not, which would read as growth
  with the data.)

No pretrained weights are needed: the seeded random MobileSAM in ../shared/reference is the base.

    python benchmarks/bench_finetune.py                              # everything (minutes)
    python benchmarks/bench_finetune.py --quick                      # small sizes (the test's run)
    python benchmarks/bench_finetune.py --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "core"))
sys.path.insert(0, str(REPO / "tests"))

import finetune_data  # noqa: E402  (tests/finetune_data.py: the Kampala chips and teacher labels)
import oracle  # noqa: E402  (tests/core/oracle.py: the official package, weight perturbation)
import sam2_oracle  # noqa: E402  (tests/core/sam2_oracle.py: the official sam2 package, perturbed weights)

import samkit  # noqa: E402
from samkit.finetune.family import Sam2Family, SamFamily  # noqa: E402
from samkit.finetune.step import PromptSettings, draw, train_image  # noqa: E402
from samkit.predictor import ImageState  # noqa: E402
import machine_info  # noqa: E402  (benchmarks/machine_info.py: the CPU line)

SHARED = Path(os.environ.get("SAMKIT_SHARED_DIR", REPO.parent / "shared"))
MOBILE_SAM = SHARED / "reference" / "mobile_sam_random" / "mobile_sam_random.pt"
GEO = SHARED / "data" / "geo"


def log(message: str) -> None:
    print(message, flush=True)


def machine() -> str:
    return (f"{machine_info.cpu()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"load average {os.getloadavg()[0]:.2f}")


# -- training step ---------------------------------------------------------------------------


def step_families(model):
    """samkit's trainable copies and the official modules, on the same perturbed weights."""
    model = copy.deepcopy(model)
    oracle.perturb_(model.mask_decoder, 5)
    ours = SamFamily.for_model(model)
    official = oracle.official_with_encoder(torch.nn.Identity(), model.state_dict())
    theirs = SamFamily(official.prompt_encoder, official.mask_decoder, 1024)
    for family in (ours, theirs):
        family.mask_decoder.train().requires_grad_(True)
    return ours, theirs


def step_batch(count: int):
    gen = np.random.default_rng(0)
    state = ImageState(torch.from_numpy(gen.standard_normal((1, 256, 64, 64)).astype(np.float32)), (768, 1024),
                       (768, 1024))
    yy, xx = np.mgrid[:768, :1024]
    masks, boxes = [], []
    for _ in range(count):
        cx, cy, rx, ry = gen.uniform(150, 870), gen.uniform(150, 620), gen.uniform(20, 120), gen.uniform(20, 120)
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        ys, xs = np.nonzero(mask)
        masks.append(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return state, masks, np.array(boxes, dtype=np.float64)


def sam2_step_families():
    """SAM 2.1 tiny: samkit's Sam2Family on samkit's modules and on the official sam2 modules, with
    the same perturbed weights (decoder trained, as by default)."""
    from samkit.modeling.sam2.model import build_sam2

    official, path = sam2_oracle.official_model("tiny")
    model = build_sam2("tiny")
    model.load_official_state_dict(official.state_dict(), path)
    ours = Sam2Family.for_model(model)
    theirs = Sam2Family(copy.deepcopy(official.sam_prompt_encoder), copy.deepcopy(official.sam_mask_decoder),
                        official=True)
    for family in (ours, theirs):
        family.mask_decoder.train()
        trainable = family.trainable_parameters(False)
        for name, param in family.mask_decoder.named_parameters():
            param.requires_grad_(f"mask_decoder.{name}" in trainable)
    return ours, theirs


def time_steps(model, objects: int, repeats: int):
    return time_family_steps(*step_families(model), *step_batch(objects), objects, repeats, "")


def time_sam2_steps(objects: int, repeats: int):
    state, masks, boxes = step_batch(objects)
    gen = np.random.default_rng(1)
    state.high_res_features = (torch.from_numpy(gen.standard_normal((1, 32, 256, 256)).astype(np.float32)),
                               torch.from_numpy(gen.standard_normal((1, 64, 128, 128)).astype(np.float32)))
    return time_family_steps(*sam2_step_families(), state, masks, boxes, objects, repeats, "SAM 2.1 tiny ")


def time_family_steps(ours, theirs, state, masks, boxes, objects: int, repeats: int, prefix: str):
    targets = np.stack([ours.low_res_target(m, state) >= 0.5 for m in masks])
    rows = []
    for label, share in (("boxes, 1 mask", 1.0), ("single points, 3 masks", 0.0)):
        settings = PromptSettings(iterations=1, box_share=share)
        times = {"ours": [], "official": []}
        losses = {}
        for repeat in range(repeats + 1):  # the first is a warm-up
            for name, family in (("ours", ours), ("official", theirs)):
                draws = draw(np.random.default_rng(repeat), objects, settings)
                start = time.perf_counter()
                stats = train_image(family, state, targets, boxes, draws, settings, 1.0 / objects)
                elapsed = time.perf_counter() - start
                for module in family.modules.values():
                    module.zero_grad(set_to_none=True)
                if repeat:
                    times[name].append(elapsed)
                losses.setdefault(name, stats.total)
        ours_s, official_s = statistics.median(times["ours"]), statistics.median(times["official"])
        agree = abs(losses["ours"] - losses["official"]) <= 1e-5 * abs(losses["official"])
        rows.append((f"{prefix}training step, {objects} objects, {label} (forward + backward)", ours_s, official_s,
                     f"loss {losses['ours']:.6f} vs {losses['official']:.6f}: {'same' if agree else 'DIFFERENT'}; "
                     f"{objects / ours_s:.1f} objects/s"))
        log(f"{rows[-1][0]}: ours {ours_s * 1000:.0f} ms, official {official_s * 1000:.0f} ms, "
            f"{official_s / ours_s:.2f}x; {rows[-1][3]}")
    return rows


# -- an epoch on the Kampala chips --------------------------------------------------------------


def epoch_rows(model, work: Path, epochs: int, train_images: int, val_images: int = 3):
    chips = finetune_data.kampala_chips(GEO)[: train_images + val_images]
    teacher = finetune_data.write_teacher_coco(chips, model, work / "teacher")
    student = finetune_data.perturbed_student(MOBILE_SAM, work / "student.pt")
    ids = list(range(1, train_images + 1))
    train = finetune_data.subset_coco(teacher.coco, work / "train.json", ids)
    val_ids = list(range(train_images + 1, train_images + val_images + 1))
    val = finetune_data.subset_coco(teacher.coco, work / "val.json", val_ids)
    result = samkit.finetune(student, train, work / "tuned.pt", val, epochs=epochs, cache_dir=teacher.embeddings,
                             progress=False)
    objects = json.loads(result.metadata.read_text())["data"]["train"]["objects"]
    seconds = [r["seconds"] for r in result.history[1:]]
    per_epoch = statistics.median(seconds)
    before, best = result.history[0], result.best
    row = (f"epoch: {train_images} Kampala chips, {objects} objects, 3 prompts each, + validation of {val_images} "
           f"chip{'s' if val_images != 1 else ''}",
           per_epoch, None,
           f"{train_images / per_epoch:.2f} images/s, {objects / per_epoch:.2f} objects/s; held-out box mIoU "
           f"{before['miou_box']:.3f} -> {best['miou_box']:.3f} (epoch {result.best_epoch} of {epochs})")
    log(f"{row[0]}: {per_epoch:.1f} s per epoch; {row[3]}")
    return [row]


# -- memory ------------------------------------------------------------------------------------

MEMORY_CHILD = """
import json, resource, sys
import numpy as np
sys.path.insert(0, {tests!r})
import samkit
from samkit.finetune import LabelledImage, object_from_mask

# per image: the batch size, and box prompts only (below), so that every step decodes one full
# batch from one image, the most a step holds; the runs then differ only in how much data they have
masks_total, per_image = {masks}, 8
mosaic = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open({mosaic!r}).convert("RGB"))
images = []
yy, xx = np.mgrid[:600, :600]
for index in range(-(-masks_total // per_image)):
    gen = np.random.default_rng(index)
    y, x = gen.integers(0, 1024 - 600, 2)
    # cut when the run reads the image, as a reader of files does: only the run's memory is measured
    crop = lambda y=y, x=x: np.ascontiguousarray(mosaic[y:y + 600, x:x + 600])
    objects = []
    for k in range(min(per_image, masks_total - index * per_image)):
        cx, cy, r = gen.uniform(100, 500), gen.uniform(100, 500), gen.uniform(15, 80)
        disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        objects.append(object_from_mask(disk, "disk", f"disk {{k}}", f"crop {{index}}"))
    images.append(LabelledImage(crop, tuple(objects), f"crop {{index}}", (600, 600)))
result = samkit.finetune({checkpoint!r}, images, {output!r}, epochs=1, prompt_iterations=1, box_share=1.0,
                         val_fraction=0.1, batch_size=per_image, progress=False)
# /proc's VmHWM starts afresh at exec; getrusage's ru_maxrss would keep the forking parent's peak
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
peak_kb = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"peak_mb": peak_kb / 1024,
                   "images": len(images), "epoch_s": result.history[1]["seconds"]}}))
"""


def memory_rows(masks: int, work: Path, small: int | None = None):
    """The peak-memory rows of a run over `small` objects (default: a tenth of `masks`, at least
    40: five images) and one over `masks`, and the growth between them."""
    rows = []
    peaks, images = {}, {}
    for count in (max(masks // 10, 40) if small is None else small, masks):
        script = MEMORY_CHILD.format(tests=str(REPO / "tests" / "core"), masks=count,
                                     mosaic=str(GEO / finetune_data.MOSAIC), checkpoint=str(MOBILE_SAM),
                                     output=str(work / f"memory-{count}.pt"))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        info = json.loads(done.stdout.strip().splitlines()[-1])
        peaks[count] = info["peak_mb"]
        images[count] = info["images"]
        row = (f"peak memory of a whole run over {count} objects ({info['images']} images of 600x600)",
               time.perf_counter() - start, None,
               f"peak RSS {info['peak_mb']:.0f} MB; the embeddings of these images would take "
               f"{info['images'] * 4.19:.0f} MB in memory; epoch {info['epoch_s']:.1f} s")
        log(f"{row[0]}: {row[3]}")
        rows.append(row)
    small, large = sorted(peaks)
    growth = peaks[large] - peaks[small]
    more_images = images[large] - images[small]
    rows.append((f"memory growth from {small} to {large} objects", None, None,
                 f"{growth:+.0f} MB for {large - small} more objects (their embeddings: "
                 f"{more_images * 4.19:.0f} MB, kept on disk)"))
    log(rows[-1][3])
    return rows


def fmt(seconds):
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def markdown(rows, header: str) -> str:
    lines = [header, "", "| stage | samkit | official | speedup | check |", "|---|---|---|---|---|"]
    for stage, ours, official, check in rows:
        speedup = f"{official / ours:.2f}x" if ours and official else "n/a"
        lines.append(f"| {stage} | {fmt(ours)} | {fmt(official)} | {speedup} | {check} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=8, help="objects per training step")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=12, help="Kampala chips to train on (of 16)")
    ap.add_argument("--val-images", type=int, default=3, help="Kampala chips to validate on (after the training ones)")
    ap.add_argument("--memory-masks", type=int, default=1000)
    ap.add_argument("--memory-small", type=int, default=None,
                    help="objects of the smaller memory run (default: a tenth of --memory-masks, at least 40); "
                         "at least 16, two images, one held out for validation")
    ap.add_argument("--skip", nargs="*", default=[], choices=["step", "sam2", "epoch", "memory"])
    ap.add_argument("--quick", action="store_true",
                    help="2 objects, 1 repeat, 1 epoch on 2 chips validated on 1, memory runs over 16 and 24 objects")
    ap.add_argument("--markdown", default="", help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    if args.quick:
        args.objects, args.repeats, args.epochs, args.train_images, args.val_images = 2, 1, 1, 2, 1
        # two and three images: the fewest that keep a validation image and a training step in
        # each run (the test proves the rows work; the memory figures need the full sizes)
        args.memory_small, args.memory_masks = 16, 24
    start_machine = machine()
    log(start_machine)
    model = samkit.load_model(MOBILE_SAM, device="cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="samkit-bench-finetune-") as tmp:
        work = Path(tmp)
        if "step" not in args.skip:
            rows += time_steps(model, args.objects, args.repeats)
        if "sam2" not in args.skip:
            rows += time_sam2_steps(args.objects, args.repeats)
        if "epoch" not in args.skip:
            rows += epoch_rows(model, work, args.epochs, args.train_images, args.val_images)
        if "memory" not in args.skip:
            rows += memory_rows(args.memory_masks, work, args.memory_small)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    header = (f"## Fine-tuning, commit {commit.stdout.strip() or '?'}: `python benchmarks/bench_finetune.py "
              f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\nMachine at start: {start_machine}.  \n"
              f"At end: {machine()}. MobileSAM and SAM 2.1 tiny (seeded random weights), fp32, medians of "
              f"{args.repeats} after a warm-up. Peak memory: VmHWM of a child process per run.")
    table = markdown(rows, header)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
