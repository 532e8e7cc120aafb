"""What a fine-tuning run writes besides the checkpoint: the training log (JSON lines), a PNG plot
of loss and mIoU per epoch, and the checkpoint itself in its base model's own format.

The plot uses matplotlib (a core dependency): axes with ticks, labels and a legend are what make
a curve readable, and drawing them by hand is the kind of code a well-kept library should own.
It is imported only here, on the Agg backend through a Figure object (no pyplot state), so it
works headless and from a background thread (the Label Studio backend trains in one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import torch

from ..errors import CheckpointError
from ..utils.files import atomic_output


def write_log(path: Path, history: Iterable[dict]) -> None:
    """One JSON object per line, one line per epoch (epoch 0: validation before training)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in history:
                handle.write(json.dumps(record) + "\n")


def write_json(path: Path, data: dict) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")


def write_plot(path: Path, history: list[dict], best_epoch: int | None, title: str) -> None:
    """Training loss (left) and held-out mIoU from a box and from one point (right) per epoch."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    loss_axes, iou_axes = figure.subplots(1, 2)
    trained = [r for r in history if r.get("loss") is not None]
    if trained:
        loss_axes.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", color="tab:red",
                       label="total (focal x20 + dice + IoU MSE)")
        loss_axes.plot([r["epoch"] for r in trained], [20 * r["focal"] for r in trained], "--", color="tab:orange",
                       label="focal x20")
        loss_axes.plot([r["epoch"] for r in trained], [r["dice"] for r in trained], "--", color="tab:purple",
                       label="dice")
        loss_axes.legend(fontsize=8)
    loss_axes.set_title("training loss per prompt")
    loss_axes.set_xlabel("epoch")
    loss_axes.grid(alpha=0.3)
    validated = [r for r in history if r.get("miou_box") is not None]
    if validated:
        epochs = [r["epoch"] for r in validated]
        iou_axes.plot(epochs, [r["miou_box"] for r in validated], "o-", color="tab:blue", label="box prompt")
        iou_axes.plot(epochs, [r["miou_point"] for r in validated], "s-", color="tab:green", label="one point")
        if best_epoch is not None:
            iou_axes.axvline(best_epoch, color="grey", linestyle=":", label=f"kept: epoch {best_epoch}")
        iou_axes.legend(fontsize=8)
    else:
        iou_axes.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=iou_axes.transAxes)
    iou_axes.set_title("held-out mIoU")
    iou_axes.set_xlabel("epoch")
    iou_axes.grid(alpha=0.3)
    for axes in (loss_axes, iou_axes):
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")


def read_checkpoint_object(path: Path):
    """Whatever a checkpoint file holds (a state_dict, or one inside {"model": ...}), tensors only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_checkpoint(output: Path, base: Path | None, fallback: dict,
                     updates: dict[str, torch.Tensor]) -> None:
    """Write the base checkpoint with `updates` (full state_dict keys) replaced: the same keys,
    the same layout ({"model": state_dict} stays so), each tensor in its stored dtype. Without a
    base file, `fallback` (the model's official checkpoint content: a state_dict, or SAM 2's
    {"model": state_dict}) is the base."""
    data = read_checkpoint_object(base) if base is not None else dict(fallback)
    container = data
    for wrapper in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data[wrapper] = container = dict(data[wrapper])
            break
    for key, value in updates.items():
        stored_key = key if key in container else f"model.{key}" if f"model.{key}" in container else None
        if stored_key is None:
            raise CheckpointError(f"{base}: has no {key!r}, which fine-tuning trained; it cannot be written back")
        stored = container[stored_key]
        container[stored_key] = value.detach().to(device="cpu", dtype=stored.dtype).clone()
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output, durable=True) as tmp:
        torch.save(data, tmp)


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_path(path: str | os.PathLike) -> str:
    return str(Path(path).resolve())
