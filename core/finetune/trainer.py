"""`samkit.finetune(...)`: fine-tune a model's mask decoder (and optionally its prompt encoder) on
labelled objects, with the image encoder frozen.

The run, in order:
1. Read the data (any reader's LabelledImages, or a COCO JSON / YOLO dataset path); split a
   validation set off the training images when none is given.
2. Embed every image once with the frozen encoder into an on-disk EmbeddingCache (samkit's
   Predictor cache, keyed by the encoder's weights and the pixels, so a later run on the same
   base model, or on a model tuned from it, reuses them). Only a few embeddings are in memory at
   a time; each object keeps its target on the low-res grid (bit-packed, 8 KB) and its box.
3. Validate before training, then per epoch: train on every object once in a seeded order,
   validate, keep the best epoch (highest mean of box and point mIoU), write the resume state,
   the log and the plot; stop early after `patience` epochs without improvement if asked.
4. Write the checkpoint (the base file with the trained weights replaced: same keys, same
   layout) and a JSON beside it (base model hash, data, settings, validation scores), each
   atomically; then the work folder is removed unless asked to keep it.

A run killed at any point is continued with resume=True from its last finished epoch: every
random draw of an epoch comes from a generator seeded by (seed, epoch), and the state written at
an epoch's end holds the weights, the optimiser's moments and the history, so the resumed run
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from ..errors import DatasetError, SamkitError
from ..utils.files import atomic_output
from ..utils.memory import release_freed_memory
from ..image_state import ImageState
from . import defaults
from .data import LabelledImage, count_objects, decode_mask, mask_box, read_dataset, split_validation
from .embeddings import EmbeddingStore
from .family import TrainingFamily, family_for
from .report import file_sha256, write_checkpoint, write_json, write_log, write_plot
from .step import PromptSettings, StepStats, Validation, draw, interior_point, train_image, validate_image

# Defaults and where they come from: defaults.py (also in finetune's docstring).
DEFAULT_LR = defaults.LR
DEFAULT_WEIGHT_DECAY = defaults.WEIGHT_DECAY
DEFAULT_BATCH_SIZE = defaults.BATCH_SIZE
DEFAULT_EPOCHS = defaults.EPOCHS
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything that decides what a run computes (a resumed run must use the same)."""

    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    batch_size: int = DEFAULT_BATCH_SIZE
    train_prompt_encoder: bool = False
    prompt_iterations: int = defaults.PROMPT_ITERATIONS
    box_share: float = defaults.BOX_SHARE
    grad_clip: float | None = None
    seed: int = 0
    dtype: str = "float32"

    def check(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            problems.append(f"the learning rate must be positive, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"weight decay must not be negative, got {self.weight_decay}")
        if self.batch_size < 1:
            problems.append(f"the batch size must be at least 1, got {self.batch_size}")
        if self.prompt_iterations < 1:
            problems.append(f"prompt iterations must be at least 1, got {self.prompt_iterations}")
        if not 0 <= self.box_share <= 1:
            problems.append(f"box_share must be within [0, 1], got {self.box_share}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be positive, got {self.grad_clip}")
        if problems:
            raise SamkitError("; ".join(problems))

    def resume_key(self) -> dict:
        """What must match between a run and its resumption (the number of epochs may grow)."""
        key = asdict(self)
        key.pop("epochs")
        return key


class Progress(NamedTuple):
    """Passed to `callback` after every optimiser step (step >= 1) and after each epoch's
    validation (step = 0; epoch 0 is the validation before training)."""

    epoch: int
    step: int
    steps: int
    loss: float | None
    record: dict | None  # the epoch's log record, after validation


@dataclass
class FinetuneResult:
    """What a run wrote, and how it scored."""

    checkpoint: Path
    metadata: Path
    log: Path
    plot: Path
    best_epoch: int
    history: list[dict] = field(default_factory=list)

    @property
    def before(self) -> dict:
        return self.history[0]

    @property
    def best(self) -> dict:
        return next(r for r in self.history if r["epoch"] == self.best_epoch)


class _TrainObject(NamedTuple):
    target: np.ndarray  # packed bits of the low-res target (h * w / 8 bytes)
    box: np.ndarray  # (4,) XYXY image pixels


class _Image(NamedTuple):
    record: LabelledImage
    key: str  # embedding cache key
    objects: list  # _TrainObject for training images; (box, point) for validation ones


def finetune(
    model,
    train,
    output: str | os.PathLike,
    val=None,
    *,
    images: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    batch_size: int = DEFAULT_BATCH_SIZE,
    train_prompt_encoder: bool = False,
    prompt_iterations: int = defaults.PROMPT_ITERATIONS,
    box_share: float = defaults.BOX_SHARE,
    grad_clip: float | None = None,
    val_fraction: float = defaults.VAL_FRACTION,
    patience: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    work_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    keep_work_dir: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callback: Callable[[Progress], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a SAM-family model's mask decoder on labelled objects; returns what it wrote.

    model: a name ("mobile_sam", "vit_b", ...), a checkpoint path, or a loaded samkit model.
    train / val: LabelledImages from any reader, or a COCO JSON / YOLO dataset path (`images`:
    the folder COCO file names are relative to; `classes`: the labels to keep). Without `val`,
    a seeded `val_fraction` of the training images is held out (0: no validation, the last
    epoch is kept).
    output: the tuned checkpoint, in the base checkpoint's own format (loads with
    samkit.load_model, torch.load(weights_only=True) and the official loaders); beside it
    `<stem>.json` (base model hash, data, settings, scores), `<stem>.log.jsonl` (one line per
    epoch) and `<stem>.png` (loss and mIoU per epoch).

    Training follows SAM's recipe (step.py, loss.py): prompts simulated from each mask (a noisy
    box or a point, then `prompt_iterations - 1` correction points with the previous logits as
    mask input), focal + dice at 20:1 on the lowest-loss output plus the IoU head's MSE, AdamW.
    Defaults: lr 1e-4 and weight decay 0.01 (MedSAM's AdamW settings; the Encord guide also uses
    1e-4; SAM 2's own fine-tuning config uses 5e-6 with a batch far larger than fits here), no
    decay on biases and norms (sam2), `batch_size` 8 objects per step, 10 epochs. `grad_clip`:
    clip the gradient norm (sam2 uses 0.1); off by default.

    Validation: held-out mIoU at image resolution from each object's tight box and from one
    point deep inside it, before training and after each epoch; the epoch with the best mean is
    written; `patience` stops after that many epochs without improvement.

    device / dtype: where and in what precision the encoder embeds and the decoder trains
    (weights stay float32; float16 uses a gradient scaler). The run is repeatable for a `seed`.
    work_dir (default `<output stem>.finetune/` beside the output) holds the resume state and,
    unless `cache_dir` names another place, the embeddings; it is removed after a successful run
    unless keep_work_dir. resume=True continues an interrupted run there; overwrite=True
    replaces an existing output. callback(Progress) is called after every step and epoch.
    """
    from ..build import load_model, resolve_dtype

    started = time.time()
    output = Path(output)
    settings = FinetuneSettings(
        epochs=int(epochs), lr=float(lr), weight_decay=float(weight_decay), batch_size=int(batch_size),
        train_prompt_encoder=bool(train_prompt_encoder), prompt_iterations=int(prompt_iterations),
        box_share=float(box_share), grad_clip=None if grad_clip is None else float(grad_clip), seed=int(seed),
        dtype=str(resolve_dtype(dtype if dtype is not None else getattr(model, "compute_dtype", None))).replace(
            "torch.", ""),
    )
    settings.check()
    if patience is not None and patience < 1:
        raise SamkitError(f"patience must be at least 1 epoch, got {patience}")
    work = Path(work_dir) if work_dir is not None else output.with_name(f"{output.stem}.finetune")
    state_path = work / STATE_FILE
    if output.exists() and not overwrite and not (resume and state_path.is_file()):
        raise SamkitError(f"{output} exists; choose another output or pass overwrite=True (--overwrite)")
    if output.is_dir():
        raise SamkitError(f"{output} is a folder; the output is the tuned checkpoint's file name")

    # -- data --------------------------------------------------------------------------------
    train_images, train_source = _read(train, images, classes, "train")
    if val is not None:
        val_images, val_source = _read(val, images, classes, "val")
        split = "given"
    elif val_fraction > 0:
        train_images, val_images = split_validation(train_images, val_fraction, settings.seed)
        val_source, split = train_source, f"{val_fraction:g} of the training images, seed {settings.seed}"
    else:
        val_images, val_source, split = [], None, "none"

    # -- model -------------------------------------------------------------------------------
    if isinstance(model, torch.nn.Module):
        sam = model
        base_path = Path(sam.checkpoint_path) if getattr(sam, "checkpoint_path", None) else None
        base_name = str(base_path) if base_path else type(sam).__name__
    else:
        sam = load_model(model, device=device, dtype=settings.dtype)
        base_path, base_name = Path(sam.checkpoint_path), str(model)
    device_t = sam.device
    compute_dtype = resolve_dtype(settings.dtype)
    family = family_for(sam)
    trained = family.trainable(settings.train_prompt_encoder)
    for module in family.modules.values():
        module.to(device_t).train().requires_grad_(False)
    for module in trained.values():
        module.requires_grad_(True)
    trained_params = family.trainable_parameters(settings.train_prompt_encoder)
    for prefix, module in trained.items():
        for name, param in module.named_parameters():
            param.requires_grad_(f"{prefix}.{name}" in trained_params)
    base_sha = file_sha256(base_path) if base_path is not None and base_path.is_file() else None
    data_key = _data_fingerprint(train_images, val_images)

    # -- resume state ------------------------------------------------------------------------
    saved = None
    if resume and state_path.is_file():
        saved = torch.load(state_path, map_location=device_t, weights_only=True)
        _check_resumable(saved, settings, base_sha, data_key, state_path)
    elif state_path.is_file():
        state_path.unlink()  # a fresh run does not mix with an old one's state

    # -- embeddings --------------------------------------------------------------------------
    store = EmbeddingStore(sam, Path(cache_dir) if cache_dir is not None else work / "embeddings",
                           expected_images=len(train_images) + len(val_images),
                           image_bytes=family.embedding_bytes)
    train_entries = _embed(store, family, train_images, True, progress, "embedding train")
    val_entries = _embed(store, family, val_images, False, progress, "embedding val")

    def get_state(entry: _Image) -> ImageState:
        state = store.get(entry.key)
        if state is None:  # evicted or damaged on disk: embed again
            state = store.state(entry.record.load(), entry.key)
        return state

    # -- optimiser ---------------------------------------------------------------------------
    params = list(trained_params.values())
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    scaler = torch.amp.GradScaler(device_t.type, enabled=compute_dtype == torch.float16)

    def autocast():
        if compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_t.type, dtype=compute_dtype)

    history: list[dict] = []
    best_epoch, best_score, best_weights = 0, -math.inf, None
    if saved is not None:
        _load_trained(trained, saved["trained"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        history = list(json.loads(saved["history"]))
        best_epoch, best_score = int(saved["best_epoch"]), float(saved["best_score"])
        best_weights = saved["best_trained"]

    def validate(epoch: int, stats: StepStats | None, seconds: float) -> dict:
        scores = _validate(family, val_entries, get_state, autocast) if val_entries else None
        record = {
            "epoch": epoch,
            "loss": None if stats is None else stats.total / max(stats.prompts, 1),
            "focal": None if stats is None else stats.focal / max(stats.prompts, 1),
            "dice": None if stats is None else stats.dice / max(stats.prompts, 1),
            "iou_mse": None if stats is None else stats.iou / max(stats.prompts, 1),
            "miou_box": None if scores is None else scores.miou_box,
            "miou_point": None if scores is None else scores.miou_point,
            "score": None if scores is None else scores.score,
            "seconds": round(seconds, 3),
        }
        return record

    if not history:
        history.append(validate(0, None, 0.0))
        best_score = history[0]["score"] if history[0]["score"] is not None else -math.inf
        best_weights = _copy_trained(trained)
        if callback is not None:
            callback(Progress(0, 0, 0, None, history[0]))
    if progress and history[0]["score"] is not None and saved is None:
        _say(progress, f"before training: mIoU box {history[0]['miou_box']:.3f}, "
                       f"one point {history[0]['miou_point']:.3f}")

    # -- epochs ------------------------------------------------------------------------------
    prompt_settings = PromptSettings(iterations=settings.prompt_iterations, box_share=settings.box_share)
    low_res = family.low_res_size
    try:
        for epoch in range(len(history), settings.epochs + 1):
            if patience is not None and val_entries and epoch - 1 - best_epoch >= patience:
                _say(progress, f"early stop: no improvement for {patience} epochs (best: epoch {best_epoch})")
                break
            epoch_start = time.perf_counter()
            rng = np.random.default_rng([settings.seed, epoch])
            batches = _epoch_batches(train_entries, settings.batch_size, rng)
            stats = StepStats()
            bar = _bar(progress, len(batches), f"epoch {epoch}/{settings.epochs}")
            for step, batch in enumerate(batches, start=1):
                optimizer.zero_grad(set_to_none=True)
                step_stats = StepStats()
                for entry, object_ids in batch:
                    state = get_state(entry)
                    targets = np.stack([
                        np.unpackbits(entry.objects[i].target)[: low_res[0] * low_res[1]].reshape(low_res).astype(bool)
                        for i in object_ids
                    ])
                    boxes = np.stack([entry.objects[i].box for i in object_ids])
                    draws = draw(rng, len(object_ids), prompt_settings)
                    step_stats = step_stats + train_image(
                        family, state, targets, boxes, draws, prompt_settings,
                        scale=1.0 / sum(len(ids) for _, ids in batch), autocast=autocast,
                        backward=lambda loss: scaler.scale(loss).backward(),
                    )
                if settings.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                stats = stats + step_stats
                release_freed_memory()
                running = stats.total / max(stats.prompts, 1)
                if bar is not None:
                    bar.set_postfix(loss=f"{running:.4f}")
                    bar.update()
                if callback is not None:
                    callback(Progress(epoch, step, len(batches), running, None))
            record = validate(epoch, stats, time.perf_counter() - epoch_start)
            improved = record["score"] is None or record["score"] > best_score
            if improved:
                best_epoch, best_score = epoch, record["score"] if record["score"] is not None else -math.inf
                best_weights = _copy_trained(trained)
            history.append(record)
            if bar is not None:
                if record["score"] is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", miou_box=f"{record['miou_box']:.3f}",
                                    miou_point=f"{record['miou_point']:.3f}")
                bar.close()
            _save_state(state_path, settings, base_sha, data_key, trained, optimizer, scaler, history,
                        best_epoch, best_score, best_weights)
            write_log(work / "log.jsonl", history)
            if callback is not None:
                callback(Progress(epoch, 0, len(batches), record["loss"], record))
    except KeyboardInterrupt:
        if state_path.is_file():
            _say(True, f"interrupted; continue from the last finished epoch with resume=True (--resume): {work}")
        raise

    # -- outputs -----------------------------------------------------------------------------
    _load_trained(trained, best_weights)
    updates = {family.checkpoint_key(f"{prefix}.{key}"): value for prefix, module in trained.items()
               for key, value in module.state_dict().items()}
    stem = output.with_suffix("")
    paths = {
        "metadata": stem.with_name(stem.name + ".json"),
        "log": stem.with_name(stem.name + ".log.jsonl"),
        "plot": stem.with_name(stem.name + ".png"),
    }
    title = f"fine-tuning {Path(base_name).name} on {train_source}"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_plot(paths["plot"], history, best_epoch if val_entries else None, title)
    write_log(paths["log"], history)
    from .. import __version__

    write_json(paths["metadata"], {
        "samkit_version": __version__,
        "checkpoint": output.name,
        "base_model": {"name": base_name, "arch": getattr(sam, "arch", None), "sha256": base_sha},
        "trained": sorted(trained),
        "data": {
            "train": _describe(train_source, train_images),
            "val": _describe(val_source, val_images) if val_images else None,
            "validation_split": split,
        },
        "settings": {**asdict(settings), "patience": patience, "device": str(device_t)},
        "validation": {
            "metric": "mean IoU at image resolution: tight box (one mask), one interior point (best of three)",
            "before": _scores(history[0]),
            "best_epoch": best_epoch,
            "best": _scores(next(r for r in history if r["epoch"] == best_epoch)),
        },
        "epochs": history,
        "seconds": round(time.time() - started, 1),
    })
    write_checkpoint(output, base_path, family.official_checkpoint(sam), updates)
    if not keep_work_dir:
        embeddings_inside = cache_dir is not None and Path(cache_dir).resolve().is_relative_to(work.resolve())
        if work_dir is None and not embeddings_inside:  # samkit's own folder: all of it goes
            shutil.rmtree(work, ignore_errors=True)
        else:  # the caller's folder: only the resume state goes (a finished run has nothing to resume)
            state_path.unlink(missing_ok=True)
    if progress and val_entries:
        best = next(r for r in history if r["epoch"] == best_epoch)
        _say(progress, f"kept epoch {best_epoch}: mIoU box {history[0]['miou_box']:.3f} -> {best['miou_box']:.3f}, "
                       f"one point {history[0]['miou_point']:.3f} -> {best['miou_point']:.3f}; wrote {output}")
    return FinetuneResult(output, paths["metadata"], paths["log"], paths["plot"], best_epoch, history)


# -- helpers ---------------------------------------------------------------------------------


def _read(data, images, classes, what: str) -> tuple[list[LabelledImage], str]:
    if isinstance(data, (str, os.PathLike)):
        records = read_dataset(data, images, classes)
        source = Path(data).name
    else:
        records = list(data)
        if not all(isinstance(r, LabelledImage) for r in records):
            raise SamkitError(f"{what}: expected a dataset path or LabelledImage records")
        if classes is not None:
            from .data import select_classes

            records = select_classes(records, classes, what)
        records = [r for r in records if r.objects]
        source = f"{len(records)} labelled images"
    if not records:
        raise DatasetError(f"{what}: no labelled object to train on")
    return records, source


def _data_fingerprint(train: list[LabelledImage], val: list[LabelledImage]) -> str:
    digest = hashlib.sha256()
    for part, images in (("train", train), ("val", val)):
        digest.update(part.encode())
        for image in images:
            digest.update(image.name.encode())
            for obj in image.objects:
                digest.update(f"{obj.name}|{obj.label}|{obj.mask['size']}|{obj.mask['counts']}".encode())
    return digest.hexdigest()


def _embed(store: EmbeddingStore, family: TrainingFamily, images: list[LabelledImage], training: bool,
           progress: bool, label: str) -> list[_Image]:
    """Embed each image (or find it cached) and keep what training or validation needs of its
    objects; only one image's pixels and masks are held at a time."""
    from ..utils.prefetch import prefetch

    entries = []
    bar = _bar(progress, len(images), label) if images else None
    loader = prefetch(images, LabelledImage.load)
    try:
        for record, future in loader:
            array = future.result()
            key = store.key(array)
            state = store.state(array, key)
            objects = []
            for obj in record.objects:
                mask = decode_mask(obj)
                if training:
                    target = family.low_res_target(mask, state) >= 0.5
                    if not (target & family.valid_cells(state)).any():  # smaller than a low-res cell
                        coverage = family.low_res_target(mask, state) * family.valid_cells(state)
                        target = coverage == coverage.max()
                    objects.append(_TrainObject(np.packbits(target.reshape(-1)), mask_box(obj)))
                else:
                    objects.append((mask_box(obj), interior_point(mask)))
            entries.append(_Image(record, key, objects))
            release_freed_memory()
            if bar is not None:
                bar.update()
    finally:
        loader.close()
        if bar is not None:
            bar.close()
    return entries


def _epoch_batches(entries: list[_Image], batch_size: int, rng: np.random.Generator):
    """Every object once, images in a random order and objects in a random order within each;
    cut into steps of batch_size objects, each a list of (image, object indices)."""
    flat = []
    for image_index in rng.permutation(len(entries)):
        entry = entries[image_index]
        flat.extend((image_index, int(i)) for i in rng.permutation(len(entry.objects)))
    batches = []
    for start in range(0, len(flat), batch_size):
        groups: dict[int, list[int]] = {}
        for image_index, object_index in flat[start : start + batch_size]:
            groups.setdefault(int(image_index), []).append(object_index)
        batches.append([(entries[i], ids) for i, ids in groups.items()])
    return batches


def _validate(family: TrainingFamily, entries: list[_Image], get_state, autocast) -> Validation:
    for module in family.modules.values():
        module.eval()
    box_ious, point_ious = [], []
    try:
        for entry in entries:
            state = get_state(entry)
            masks = np.stack([decode_mask(obj) for obj in entry.record.objects])
            boxes = np.stack([box for box, _ in entry.objects])
            points = np.stack([point for _, point in entry.objects])
            by_box, by_point = validate_image(family, state, masks, boxes, points, autocast)
            box_ious.append(by_box)
            point_ious.append(by_point)
    finally:
        for module in family.modules.values():
            module.train()
    box_all, point_all = np.concatenate(box_ious), np.concatenate(point_ious)
    return Validation(float(box_all.mean()), float(point_all.mean()), int(box_all.size))


def _copy_trained(trained: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": value.detach().clone()
            for prefix, module in trained.items() for key, value in module.state_dict().items()}


def _load_trained(trained: dict[str, torch.nn.Module], weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for prefix, module in trained.items():
            for key, value in module.state_dict().items():
                value.copy_(weights[f"{prefix}.{key}"])


def _save_state(path: Path, settings, base_sha, data_key, trained, optimizer, scaler, history, best_epoch,
                best_score, best_weights) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": 1,
        "settings": json.dumps(settings.resume_key(), sort_keys=True),
        "base_sha256": base_sha or "",
        "data": data_key,
        "trained": _copy_trained(trained),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "history": json.dumps(history),
        "best_epoch": best_epoch,
        "best_score": best_score,
        "best_trained": best_weights,
    }
    with atomic_output(path, durable=True) as tmp:
        torch.save(state, tmp)


def _check_resumable(saved: dict, settings: FinetuneSettings, base_sha, data_key: str, path: Path) -> None:
    if saved.get("format") != 1:
        raise SamkitError(f"{path} is not a samkit fine-tuning state this version can resume")
    theirs = json.loads(saved["settings"])
    ours = settings.resume_key()
    differ = [f"{k} {theirs.get(k)!r} then, {ours[k]!r} now" for k in ours if theirs.get(k) != ours[k]]
    if differ:
        raise SamkitError(
            f"cannot resume the run in {path.parent}: it was started with other settings ({'; '.join(differ)}); "
            "resume with the same settings, or start afresh without resume"
        )
    if (saved["base_sha256"] or None) != base_sha:
        raise SamkitError(f"cannot resume the run in {path.parent}: it was started from another base checkpoint")
    if saved["data"] != data_key:
        raise SamkitError(
            f"cannot resume the run in {path.parent}: its training or validation data differ from now; "
            "resume with the same data, or start afresh without resume"
        )


def _describe(source, images: list[LabelledImage]) -> dict:
    labels: dict[str, int] = {}
    for image in images:
        for obj in image.objects:
            labels[str(obj.label)] = labels.get(str(obj.label), 0) + 1
    return {"source": source, "images": len(images), "objects": count_objects(images), "classes": labels}


def _scores(record: dict) -> dict:
    return {k: record[k] for k in ("miou_box", "miou_point", "score")}


def _bar(progress: bool, total: int, label: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="step" if label.startswith("epoch") else "image", leave=True)


def _say(progress: bool, message: str) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message)
