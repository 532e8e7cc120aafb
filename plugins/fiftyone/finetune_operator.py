"""The ``finetune`` operator, "SAM: fine-tune on a label field": samkit.fiftyone.finetune from the
App, from Python (``execute_operator``) or on a delegated worker. It writes a checkpoint that the
other operators' "model" input and ``SamModel(model=...)`` take.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fiftyone.core.labels as fol
import fiftyone.operators as foo
import fiftyone.operators.types as types

from samkit.finetune import defaults

FINETUNE_DEFAULTS: dict[str, Any] = {
    "label_field": None,
    "output": "",  # default: <fiftyone default dataset dir>/samkit_models/<dataset>-<field>.pt
    "model": "",
    "epochs": defaults.EPOCHS,
    "lr": defaults.LR,
    "batch_size": defaults.BATCH_SIZE,
    "val_fraction": defaults.VAL_FRACTION,
    "classes": "",
    "train_prompt_encoder": False,
    "seed": 0,
    "overwrite": False,
}


def default_output(dataset_name: str, label_field: str) -> str:
    import fiftyone as fo

    return str(Path(fo.config.default_dataset_dir) / "samkit_models" / f"{dataset_name}-{label_field}.pt")


class FineTune(foo.Operator):
    defaults = FINETUNE_DEFAULTS

    @property
    def config(self):
        return foo.OperatorConfig(
            name="finetune", label="SAM: fine-tune on a label field",
            description="Fine-tune SAM's mask decoder on the masks or polygons of a label field (samkit)",
            dynamic=True, allow_immediate_execution=True, allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        from samkit.fiftyone.operators import _delegation_hint, _label_fields

        d = self.defaults
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Fine-tune on")
        choices = _label_fields(ctx.dataset, (fol.Detections, fol.Polylines))
        dropdown = types.Dropdown(label="Label field",
                                  description="Detections with instance masks, or Polylines (closed polygons)")
        for name in choices:
            dropdown.add_choice(name, label=name)
        prop = inputs.str("label_field", required=True, label="Label field", view=dropdown)
        if not choices:
            prop.invalid = True
            prop.error_message = "This dataset has no Detections or Polylines field to train on"
        field = ctx.params.get("label_field") or "labels"
        dataset = ctx.dataset.name if ctx.dataset is not None else "dataset"
        inputs.str("output", default=default_output(dataset, field), required=False, label="Checkpoint",
                   description="Where the tuned checkpoint goes, on the machine that runs the operation; use it as "
                               "the other operators' model")
        inputs.str("model", default=d["model"], required=False, label="Base model",
                   description="mobile_sam, vit_b, vit_l, vit_h or a checkpoint path. Empty: $SAMKIT_CHECKPOINT, "
                               "else mobile_sam")
        inputs.int("epochs", default=d["epochs"], min=1, label="Epochs")
        inputs.float("lr", default=d["lr"], min=0.0, label="Learning rate", description="AdamW (MedSAM's 1e-4)")
        inputs.int("batch_size", default=d["batch_size"], min=1, label="Objects per step")
        inputs.float("val_fraction", default=d["val_fraction"], min=0.0, max=0.9, label="Held-out share",
                     description="Samples kept for validation (mIoU before training and after each epoch)")
        inputs.str("classes", default=d["classes"], required=False, label="Classes",
                   description="Comma-separated labels to train on; empty: all")
        inputs.bool("train_prompt_encoder", default=d["train_prompt_encoder"], label="Train the prompt encoder too")
        inputs.int("seed", default=d["seed"], label="Seed")
        inputs.bool("overwrite", default=d["overwrite"], label="Replace an existing checkpoint")
        _delegation_hint(inputs, ctx)
        return types.Property(inputs, view=types.View(label="SAM: fine-tune on a label field"))

    def resolve_execution_options(self, ctx):
        from samkit.fiftyone.operators import ExecutionOptions, _not_schedulable

        if _not_schedulable(ctx) is not None:
            return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=False)
        return super().resolve_execution_options(ctx)

    def execute(self, ctx):
        from samkit.fiftyone.operators import _param, _secret, _target_view
        from samkit.fiftyone.training import finetune

        p = lambda name: _param(ctx, self.defaults, name)  # noqa: E731
        label_field = p("label_field")
        output = p("output") or default_output(ctx.dataset.name, label_field)
        classes = [c.strip() for c in str(p("classes") or "").split(",") if c.strip()] or None

        def progress(update) -> None:
            if update.step == 0 and update.record is not None:
                label = f"epoch {update.epoch}: mIoU box {update.record.get('miou_box')}"
            else:
                label = f"epoch {update.epoch}, step {update.step}/{update.steps}"
            fraction = (update.epoch - 1 + update.step / max(update.steps, 1)) / int(p("epochs"))
            ctx.set_progress(progress=max(0.0, min(1.0, fraction)), label=label)

        result = finetune(
            _target_view(ctx), label_field, output,
            model=p("model") or _secret(ctx, "SAMKIT_CHECKPOINT") or "mobile_sam",
            device=_secret(ctx, "SAMKIT_DEVICE"), classes=classes, epochs=int(p("epochs")), lr=float(p("lr")),
            batch_size=int(p("batch_size")), val_fraction=float(p("val_fraction")),
            train_prompt_encoder=bool(p("train_prompt_encoder")), seed=int(p("seed")),
            overwrite=bool(p("overwrite")), progress=False, callback=progress,
        )
        before, best = result.before, result.best
        scores = "" if best.get("miou_box") is None else (
            f": held-out mIoU from a box {before['miou_box']:.3f} -> {best['miou_box']:.3f}, from one point "
            f"{before['miou_point']:.3f} -> {best['miou_point']:.3f}")
        return {
            "checkpoint": os.fspath(result.checkpoint),
            "best_epoch": result.best_epoch,
            "miou_box_before": before.get("miou_box"),
            "miou_box": best.get("miou_box"),
            "miou_point_before": before.get("miou_point"),
            "miou_point": best.get("miou_point"),
            "message": f"wrote {result.checkpoint} (epoch {result.best_epoch}){scores}",
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        outputs.str("checkpoint", label="Checkpoint (use it as the model of the other operators)")
        outputs.int("best_epoch", label="Epoch kept")
        outputs.float("miou_box", label="Held-out mIoU, box prompts")
        outputs.float("miou_point", label="Held-out mIoU, one point")
        return types.Property(outputs, view=types.View(label="SAM fine-tuning"))
