"""Fine-tuning SAM 2.1: gradient parity with the official sam2 package, and a small end-to-end run.

- The loss: samkit.finetune's loss on SAM 2 outputs (`Sam2Family.iou_loss` "l1", the object
  score) equals sam2's own training loss, `training.loss_fns.MultiStepMultiMasksAndIous` with the
  weights of `sam2.1_hiera_b+_MOSE_finetune.yaml` (mask 20, dice 1, IoU 1 as L1 over all outputs,
  object score 1 as plain BCE), in value and in its gradient.
- A decoder call as training makes it (a noisy box with points and the previous logits as mask
  input; single points with three outputs), samkit's modules + samkit's loss against the official
  `sam_prompt_encoder` / `sam_mask_decoder` called as sam2's image predictor calls them + sam2's
  loss, on the same weights (an official SAM 2.1 tiny with perturbed weights) and the same batch:
  the same loss and the same gradient for every trained parameter, to float32 tolerance.
- A whole training step (prompt simulation, correction iterations, backward) through
  `Sam2Family` with samkit's modules and with the official ones: the same gradients.
- The SAM 2 frames: prompts stretched with the image to 1024 x 1024, targets on the 256 x 256
  grid of the stretched image.
- End to end: `samkit.finetune` on a seeded SAM 2.1 tiny (build_sam2, saved in the official
  `{"model": ...}` format) for a few steps on small images, its progress bar showing the epoch's
  steps, loss and validation mIoU: the checkpoint has exactly the base file's keys, only trained
  decoder weights changed (conv_s0 / conv_s1 stay: they are part of the cached image side), and
  it loads into the official sam2 model (strict) and into samkit's Sam2.
"""

from __future__ import annotations

import copy
import importlib
import sys
import types

import numpy as np
import pytest
import torch

import samkit
from samkit.finetune.family import Sam2Family, family_for
from samkit.finetune.loss import mask_loss
from samkit.finetune.step import PromptSettings, draw, train_image
from samkit.modeling.sam2.model import build_sam2, image_weights
from samkit.predictor import ImageState

from finetune_data import ellipse_objects

try:
    from . import sam2_oracle
    from .gradient_parity import assert_same_gradients
except ImportError:
    import sam2_oracle
    from gradient_parity import assert_same_gradients

SIZE = (480, 640)


def official_loss_module():
    """sam2's training loss with the MOSE fine-tuning config's settings. `training.loss_fns` imports
    one constant from `training.trainer`, whose own imports (tensordict, ...) are not installed: a
    stand-in module gives it that constant for the import, and is removed after."""
    sam2_oracle.official_sam2()
    if "training.loss_fns" not in sys.modules:
        stub = types.ModuleType("training.trainer")
        stub.CORE_LOSS_KEY = "core_loss"
        importlib.import_module("training")
        had = sys.modules.get("training.trainer")
        sys.modules["training.trainer"] = had or stub
        try:
            importlib.import_module("training.loss_fns")
        finally:
            if sys.modules.get("training.trainer") is stub:
                del sys.modules["training.trainer"]
    loss_fns = sys.modules["training.loss_fns"]
    return loss_fns.MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
        supervise_all_iou=True, iou_use_l1_loss=True, pred_obj_scores=True,
        focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1.0,
    )


def official_total(masks, ious, object_scores, targets) -> torch.Tensor:
    """sam2's core loss of one prompt step: masks (B, M, h, w), targets (B, h, w)."""
    outs = {"multistep_pred_multimasks_high_res": [masks], "multistep_pred_ious": [ious],
            "multistep_object_score_logits": [object_scores]}
    return official_loss_module()([outs], targets[None].float())["core_loss"]


@pytest.fixture(scope="module")
def official():
    model, path = sam2_oracle.official_model("tiny")
    return model, path


@pytest.fixture(scope="module")
def ours(official):
    model = build_sam2("tiny")
    model.load_official_state_dict(official[0].state_dict(), official[1])
    return model.eval()


def families(ours_model, official_model, train_prompt_encoder=True):
    """(ours, official): trainable copies of the same weights behind Sam2Family."""
    mine = family_for(ours_model)
    assert isinstance(mine, Sam2Family)
    theirs = Sam2Family(copy.deepcopy(official_model.sam_prompt_encoder),
                        copy.deepcopy(official_model.sam_mask_decoder), official=True)
    for family in (mine, theirs):
        trainable = family.trainable_parameters(train_prompt_encoder)
        for prefix, module in family.modules.items():
            module.train()
            for name, param in module.named_parameters():
                param.requires_grad_(f"{prefix}.{name}" in trainable)
    return mine, theirs


def trained_grads(family, train_prompt_encoder=True) -> dict[str, torch.Tensor]:
    out = {}
    for key, param in family.trainable_parameters(train_prompt_encoder).items():
        out[key] = torch.zeros_like(param) if param.grad is None else param.grad.detach().clone()
    for module in family.modules.values():
        for param in module.parameters():
            param.grad = None
    return out


def batch(seed: int, count: int = 5):
    """An image state (random embedding and high-res maps) and `count` elliptical objects."""
    gen = np.random.default_rng(seed)
    features = torch.from_numpy(gen.standard_normal((1, 256, 64, 64)).astype(np.float32))
    high_res = (torch.from_numpy(gen.standard_normal((1, 32, 256, 256)).astype(np.float32)),
                torch.from_numpy(gen.standard_normal((1, 64, 128, 128)).astype(np.float32)))
    state = ImageState(features, SIZE, (1024, 1024), high_res)
    masks, boxes = ellipse_objects(gen, SIZE, count)
    return state, masks, boxes


def test_loss_equals_sam2_training_loss():
    """Value and gradient (w.r.t. logits, IoU predictions, object scores) of samkit's loss with
    the SAM 2 family's settings equal sam2's MultiStepMultiMasksAndIous, for three outputs
    (lowest-loss one back-propagated, every IoU supervised) and for one."""
    gen = torch.Generator().manual_seed(0)
    targets = (torch.rand(4, 64, 64, generator=gen) > 0.6).float()
    for outputs in (3, 1):
        inputs = [torch.randn(4, outputs, 64, 64, generator=gen) * 3, torch.rand(4, outputs, generator=gen),
                  torch.randn(4, 1, generator=gen)]
        ours_in = [t.clone().requires_grad_(True) for t in inputs]
        theirs_in = [t.clone().requires_grad_(True) for t in inputs]
        valid = torch.ones(64, 64, dtype=torch.bool)
        ours = mask_loss(ours_in[0], ours_in[1], targets, valid, ours_in[2], iou_loss="l1").total.mean()
        theirs = official_total(*theirs_in, targets)
        ours.backward()
        theirs.backward()
        assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-6)
        for mine, ref in zip(ours_in, theirs_in):
            torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-5, atol=1e-9)
    # SAM 1's squared error is not sam2's loss: the check can tell
    ours = mask_loss(inputs[0], inputs[1], targets, valid, inputs[2], iou_loss="mse").total.mean()
    assert float(ours) != pytest.approx(float(official_total(*inputs, targets)), rel=1e-4)


def official_decode(family: Sam2Family, state, coords, labels, boxes, mask_input, multimask):
    """The official modules called as sam2's SAM2ImagePredictor._predict calls them (box corners
    labelled 2 and 3 in front of the points, repeat_image for several prompts)."""
    if boxes is not None:
        corners = boxes.reshape(-1, 2, 2)
        corner_labels = torch.tensor([[2, 3]], dtype=torch.int64).expand(len(corners), -1)
        coords = corners if coords is None else torch.cat([corners, coords], dim=1)
        labels = corner_labels if labels is None else torch.cat([corner_labels, labels], dim=1)
    encoder, decoder = family.prompt_encoder, family.mask_decoder
    sparse, dense = encoder(points=(coords, labels), boxes=None, masks=mask_input)
    masks, ious, _, object_scores = decoder(
        image_embeddings=state.features, image_pe=encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask, repeat_image=len(coords) > 1,
        high_res_features=list(state.high_res_features))
    return masks, ious, object_scores


@pytest.mark.parametrize("prompt", ["box+points+mask", "one-point-multimask"])
def test_decoder_call_and_loss_match_official_sam2(ours, official, prompt):
    """samkit's modules and loss against the official modules and sam2's loss: loss and every
    trained parameter's gradient (prompt encoder trained too)."""
    mine, theirs = families(ours, official[0])
    state, masks, boxes = batch(1, count=4)
    targets = torch.from_numpy(np.stack([mine.low_res_target(m, state) >= 0.5 for m in masks]))
    valid = torch.from_numpy(mine.valid_cells(state))
    gen = np.random.default_rng(3)
    if prompt == "box+points+mask":
        coords = torch.from_numpy(mine.prompt_points(gen.uniform(0, 480, (4, 2, 2)), state)).float()
        labels = torch.tensor([[1, 0]] * 4)
        prompt_boxes = torch.from_numpy(mine.prompt_boxes(boxes, state)).float()
        mask_input = torch.from_numpy(gen.standard_normal((4, 1, 256, 256)).astype(np.float32) * 5)
        multimask = False
    else:
        points = np.array([[b[0] + b[2], b[1] + b[3]] for b in boxes])[:, None] / 2
        coords = torch.from_numpy(mine.prompt_points(points, state)).float()
        labels = torch.ones(4, 1, dtype=torch.int64)
        prompt_boxes = mask_input = None
        multimask = True
    out = mine.decode(state, coords, labels, prompt_boxes, mask_input, multimask)
    assert out.object_score_logits is not None and out.low_res_logits.shape[1] == (3 if multimask else 1)
    ours_loss = mask_loss(out.low_res_logits, out.iou_predictions, targets, valid, out.object_score_logits,
                          mine.iou_loss).total.mean()
    ours_loss.backward()
    their_loss = official_total(*official_decode(theirs, state, coords, labels, prompt_boxes, mask_input, multimask),
                                targets)
    their_loss.backward()
    assert float(ours_loss) == pytest.approx(float(their_loss), rel=1e-5)
    ours_grads, their_grads = trained_grads(mine), trained_grads(theirs)
    assert_same_gradients(ours_grads, their_grads)
    used = [name for name, g in their_grads.items() if float(g.abs().max()) > 0]
    assert len(used) > 0.6 * len(their_grads)
    assert "mask_decoder.pred_obj_score_head.layers.2.weight" in used  # the object score is supervised
    assert any(name.startswith("prompt_encoder.") for name in used)
    assert not any(".conv_s0." in name or ".conv_s1." in name for name in ours_grads)  # the cached image side


@pytest.mark.parametrize("box_share", [1.0, 0.0], ids=["box", "point"])
def test_training_step_matches_official_modules(ours, official, box_share):
    """A whole step with a correction iteration (points from the error region, the previous
    logits as mask input): the same loss statistics and gradients through both module sets."""
    mine, theirs = families(ours, official[0], train_prompt_encoder=False)
    state, masks, boxes = batch(2, count=3)
    targets = np.stack([mine.low_res_target(m, state) >= 0.5 for m in masks])
    settings = PromptSettings(iterations=2, box_share=box_share)
    results = []
    for family in (mine, theirs):
        draws = draw(np.random.default_rng(7), len(targets), settings)
        stats = train_image(family, state, targets, boxes, draws, settings, scale=1.0 / len(targets))
        results.append((stats, trained_grads(family, False)))
    (ours_stats, ours_grads), (their_stats, their_grads) = results
    assert ours_stats.prompts == their_stats.prompts == 2 * len(masks)
    assert ours_stats.total == pytest.approx(their_stats.total, rel=1e-5)
    assert_same_gradients(ours_grads, their_grads)


def test_sam2_frames_stretch_with_the_image(ours):
    """Prompts and targets follow SAM 2's square resize: x scaled by 1024 / W, y by 1024 / H."""
    family = family_for(ours)
    state = ImageState(torch.zeros(1, 256, 64, 64), (200, 800), (1024, 1024))
    assert np.allclose(family.prompt_points(np.array([[400.0, 100.0]]), state), [[512.0, 512.0]])
    assert np.allclose(family.prompt_boxes(np.array([[0.0, 0.0, 800.0, 200.0]]), state), [[0, 0, 1024, 1024]])
    assert family.prompt_extent(state) == (1024.0, 1024.0)
    mask = np.zeros((200, 800), dtype=bool)
    mask[:100, :400] = True  # the top-left quarter of the image is the top-left quarter of the square
    target = family.low_res_target(mask, state)
    assert target.shape == (256, 256)
    assert target[:128, :128].min() == 1.0 and target[128:].max() == 0.0 and target[:, 128:].max() == 0.0
    assert family.valid_cells(state).all()
    logits = torch.zeros(1, 256, 256)
    logits[0, :128, :128] = 5
    assert family.logits_to_image(logits, state).shape == (1, 200, 800)


def test_sam2_finetune_run_writes_an_official_checkpoint(official, tmp_path, capfd):
    """A few steps of samkit.finetune on a seeded SAM 2.1 tiny whose base file is an official
    `{"model": ...}` checkpoint (video weights included): the tuned file has the same keys, only
    trained decoder weights changed, and the official loader (sam2's build_sam2 with ckpt_path,
    strict) and samkit's Sam2 read it."""
    base = official[1]
    model = build_sam2("tiny")
    model.load_official_state_dict(torch.load(base, map_location="cpu", weights_only=True)["model"], base)
    model.checkpoint_path = str(base)
    gen = np.random.default_rng(5)
    records = []
    for number in range(3):
        image = (gen.random((96, 128, 3)) * 255).astype(np.uint8)
        objects = []
        for k in range(2):
            mask = np.zeros((96, 128), dtype=bool)
            top, left = 10 + 30 * k, 15 + 40 * k + 5 * number
            mask[top:top + 30, left:left + 40] = True
            objects.append(samkit.finetune.object_from_mask(mask, "box", f"object {k}", f"image {number}"))
        records.append(samkit.finetune.LabelledImage(lambda image=image: image, tuple(objects), f"image {number}",
                                                     (96, 128)))
    output = tmp_path / "tuned.pt"
    result = samkit.finetune(model, records[:2], output, val=records[2:], epochs=1, batch_size=2,
                             prompt_iterations=2, lr=1e-3, progress=True, seed=3)
    assert result.checkpoint == output and len(result.history) == 2
    assert result.history[1]["loss"] is not None and result.history[0]["miou_box"] is not None
    # the progress bar: each epoch's steps with the running loss, then its validation scores
    captured = capfd.readouterr()
    shown = captured.out + captured.err
    assert "before training: mIoU box" in shown and "epoch 1/1" in shown and "2/2" in shown
    assert "loss=" in shown and "miou_box=" in shown and "miou_point=" in shown
    assert f"kept epoch {result.best_epoch}" in shown
    base_sd = torch.load(base, map_location="cpu", weights_only=True)["model"]
    tuned = torch.load(output, map_location="cpu", weights_only=True)
    assert set(tuned) == {"model"} and list(tuned["model"]) == list(base_sd)
    changed = {k for k, v in tuned["model"].items() if not torch.equal(v, base_sd[k])}
    assert changed and all(k.startswith("sam_mask_decoder.") for k in changed)
    assert "sam_mask_decoder.iou_prediction_head.layers.0.weight" in changed
    assert "sam_mask_decoder.pred_obj_score_head.layers.2.weight" in changed
    assert not any(".conv_s0." in k or ".conv_s1." in k for k in changed)
    sam2_oracle.official_sam2()
    from sam2.build_sam import build_sam2 as official_build

    reference = official_build(sam2_oracle.config_name("tiny"), ckpt_path=str(output), device="cpu")
    for key in ("sam_mask_decoder.iou_token.weight", "sam_mask_decoder.pred_obj_score_head.layers.2.weight"):
        assert torch.equal(reference.state_dict()[key], tuned["model"][key])
    again = build_sam2("tiny")
    again.load_official_state_dict(tuned["model"], output)
    assert torch.equal(again.mask_decoder.iou_token.weight, tuned["model"]["sam_mask_decoder.iou_token.weight"])
    assert set(image_weights(tuned["model"])) == set(again.state_dict())


def test_sam2_checkpoint_without_a_base_file_is_official(tmp_path):
    """A model with no base file is written from its own weights, under the official names."""
    torch.manual_seed(0)
    model = build_sam2("tiny")
    data = Sam2Family.for_model(model).official_checkpoint(model)
    assert set(data) == {"model"}
    assert set(image_weights(data["model"])) == set(model.state_dict())
    assert "sam_mask_decoder.conv_s0.weight" in data["model"] and "no_mem_embed" in data["model"]
