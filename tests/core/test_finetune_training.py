"""A real fine-tuning run, small enough for CI, on real aerial images (the Kampala chips).

A decoder cannot be shown to learn "buildings" from random weights (it collapses to empty masks),
so the run checks the whole training path this way: the seeded random MobileSAM (the teacher)
labels each building footprint's box with its own mask; a copy with its mask decoder perturbed
(the student) is fine-tuned on six chips through `samkit finetune`, and its agreement with the
teacher on three held-out chips must rise clearly. The tuned checkpoint must then load with
samkit.load_model, with torch.load(weights_only=True), and with the official segment-anything
modules, giving the same masks, and the run's written scores must be what the tuned model
really does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_data import perturbed_student, subset_coco
from PIL import Image

import samkit
from samkit.cli import main
from samkit.finetune import decode_mask, read_coco

try:  # tests/core as a package or as a plain directory on sys.path
    from . import oracle
except ImportError:
    import oracle

EPOCHS = 2
TRAIN_IMAGES, VAL_IMAGES = [1, 2, 3, 4, 5, 6], [7, 8, 9]


@pytest.fixture(scope="module")
def tuned(kampala_teacher, mobile_sam_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned")
    student = perturbed_student(mobile_sam_checkpoint, root / "student.pt")
    train = subset_coco(kampala_teacher.coco, root / "train.json", TRAIN_IMAGES)
    val = subset_coco(kampala_teacher.coco, root / "val.json", VAL_IMAGES)
    output = root / "out" / "tuned.pt"
    code = main([
        "finetune", "--model", str(student), "--train", str(train), "--val", str(val), "--epochs", str(EPOCHS),
        "--output", str(output), "--batch-size", "4", "--prompt-iterations", "2", "--seed", "0",
        "--embeddings", str(kampala_teacher.embeddings), "-q",
    ])
    assert code == 0
    return {"student": student, "train": train, "val": val, "output": output, "root": root}


def test_agreement_with_the_teacher_rises(tuned):
    meta = json.loads(tuned["output"].with_suffix(".json").read_text())
    before, best = meta["validation"]["before"], meta["validation"]["best"]
    print("held-out mIoU with the teacher:", before, "->", best, "epoch", meta["validation"]["best_epoch"])
    assert meta["validation"]["best_epoch"] >= 1
    assert best["miou_box"] >= before["miou_box"] + 0.1, (before, best)
    assert best["miou_box"] >= 0.8
    assert best["miou_point"] > before["miou_point"]
    # what was written about the run
    assert meta["trained"] == ["mask_decoder"]
    assert meta["base_model"]["sha256"] == samkit.finetune.report.file_sha256(tuned["student"])
    assert meta["data"]["train"]["images"] == len(TRAIN_IMAGES) and meta["data"]["val"]["images"] == len(VAL_IMAGES)
    assert meta["data"]["train"]["classes"] == {"building": meta["data"]["train"]["objects"]}
    assert meta["settings"]["epochs"] == EPOCHS and meta["settings"]["lr"] == 1e-4
    log = [json.loads(line) for line in tuned["output"].with_suffix(".log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(EPOCHS + 1)) and log == meta["epochs"]
    assert log[0]["loss"] is None and all(r["loss"] > 0 for r in log[1:])
    assert log[-1]["loss"] < log[1]["loss"]
    with Image.open(tuned["output"].with_suffix(".png")) as plot:
        assert plot.size == (1000, 400) and plot.format == "PNG"
        assert len(np.unique(np.asarray(plot.convert("L")))) > 20  # drawn, not blank
    # samkit's work folder (resume state, log) is gone; the embeddings named with --embeddings stay
    assert not tuned["output"].with_name("tuned.finetune").exists()


def test_checkpoint_has_the_base_format(tuned):
    base = torch.load(tuned["student"], map_location="cpu", weights_only=True)
    saved = torch.load(tuned["output"], map_location="cpu", weights_only=True)
    assert list(saved) == list(base)
    assert all(saved[k].dtype == base[k].dtype and saved[k].shape == base[k].shape for k in base)
    changed = {k for k in base if not torch.equal(saved[k], base[k])}
    assert changed and all(k.startswith("mask_decoder.") for k in changed)
    assert len(changed) > 0.9 * sum(1 for k in base if k.startswith("mask_decoder."))


def val_masks(val_json: Path):
    for record in read_coco(val_json):
        yield record.load(), [decode_mask(o) for o in record.objects]


def test_the_tuned_model_does_what_the_run_reported(tuned):
    """samkit.load_model reads the tuned file, and its Predictor reproduces the written box mIoU
    (the run validated through the training modules, this goes through the inference path)."""
    model = samkit.load_model(tuned["output"], device="cpu")
    predictor = samkit.Predictor(model)
    ious = []
    for image, masks in val_masks(tuned["val"]):
        predictor.set_image(image)
        boxes = []
        for mask in masks:
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        predicted, _, _ = predictor.predict_batch(boxes=np.array(boxes, dtype=float))
        ious += [oracle.mask_iou(p[0], m) for p, m in zip(predicted, masks)]
    meta = json.loads(tuned["output"].with_suffix(".json").read_text())
    assert np.mean(ious) == pytest.approx(meta["validation"]["best"]["miou_box"], abs=2e-3)


def test_official_modules_load_the_tuned_checkpoint(tuned):
    """The official prompt encoder and mask decoder load the tuned weights (strict) and give the
    masks samkit gives (segment_anything has no TinyViT, so samkit's encoder stands beside them)."""
    ours = samkit.load_model(tuned["output"], device="cpu")
    state = torch.load(tuned["output"], map_location="cpu", weights_only=True)
    official = oracle.official_with_encoder(ours.image_encoder, state)
    predictor = oracle.official().SamPredictor(official)
    samkit_predictor = samkit.Predictor(ours)
    image, masks = next(val_masks(tuned["val"]))
    predictor.set_image(image)
    samkit_predictor.set_image(image)
    for mask in masks[:3]:
        ys, xs = np.nonzero(mask)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
        theirs, _, _ = predictor.predict(box=box, multimask_output=False)
        mine, _, _ = samkit_predictor.predict(box=box, multimask_output=False)
        assert oracle.mask_iou(theirs[0], mine[0]) > 0.99


@pytest.mark.slow
def test_vit_b_checkpoint_loads_with_the_official_loader(kampala_teacher, tmp_path):
    """A ViT-B run (one chip, two objects, one epoch, no validation) writes a file that the
    official `sam_model_registry["vit_b"](checkpoint=...)` loads strictly, holding the tuned
    decoder; and torch.load(weights_only=True) and samkit.load_model read it."""
    _, base_path = oracle.official_vit_b()
    train = subset_coco(kampala_teacher.coco, tmp_path / "one.json", [2], max_objects=2)
    output = tmp_path / "vit_b_tuned.pth"
    result = samkit.finetune(base_path, train, output, epochs=1, val_fraction=0, prompt_iterations=1,
                             batch_size=2, progress=False)
    assert result.best_epoch == 1 and result.history[-1]["miou_box"] is None
    saved = torch.load(output, map_location="cpu", weights_only=True)
    base = torch.load(base_path, map_location="cpu", weights_only=True)
    assert list(saved) == list(base)
    official = oracle.official().sam_model_registry["vit_b"](checkpoint=str(output))
    decoder = official.mask_decoder.state_dict()
    assert all(torch.equal(decoder[k], saved[f"mask_decoder.{k}"]) for k in decoder)
    assert any(not torch.equal(saved[f"mask_decoder.{k}"], base[f"mask_decoder.{k}"]) for k in decoder)
    assert samkit.load_model(output, device="cpu").arch == "vit_b"
