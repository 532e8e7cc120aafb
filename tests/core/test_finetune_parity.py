"""Gradient parity of fine-tuning: on the same weights and batch, samkit's training step gives the
same loss and the same gradient for every trained parameter as the official segment-anything
prompt encoder and mask decoder, to float32 tolerance.

Both sides run the very same step code (samkit.finetune's prompt simulation, loss and backward);
only the modules differ, which is the point: the step calls them through the official
interface, so any difference is a difference of the networks' forward or backward.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from samkit.finetune.family import SamFamily
from samkit.finetune.loss import mask_loss
from samkit.finetune.step import PromptSettings, draw, train_image
from samkit.predictor import ImageState

from finetune_data import ellipse_objects

try:  # tests/core as a package or as a plain directory on sys.path
    from . import oracle
    from .gradient_parity import assert_same_gradients
except ImportError:
    import oracle
    from gradient_parity import assert_same_gradients

SEED = 2024


@pytest.fixture(scope="module")
def weights(mobile_sam):
    """The MobileSAM decoder weights moved away from their initial values (every norm, bias and
    embedding), logits scaled to a unit-like spread, as a state_dict of the whole model."""
    model = copy.deepcopy(mobile_sam)
    oracle.perturb_(model.prompt_encoder, SEED)
    oracle.perturb_(model.mask_decoder, SEED + 1)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(oracle.LOGIT_GAIN)
            mlp.layers[-1].bias.mul_(oracle.LOGIT_GAIN)
    return model


def families(model):
    """(ours, official): trainable copies of the same weights behind the same interface."""
    ours = SamFamily.for_model(model)
    official = oracle.official_with_encoder(torch.nn.Identity(), model.state_dict())
    theirs = SamFamily(official.prompt_encoder, official.mask_decoder, 1024)
    for family in (ours, theirs):
        for module in family.modules.values():
            module.train().requires_grad_(True)
    return ours, theirs


def batch(seed: int, count: int = 6, size=(480, 640)):
    """An image state (random embedding) and `count` elliptical objects with their boxes."""
    gen = np.random.default_rng(seed)
    features = torch.from_numpy(gen.standard_normal((1, 256, 64, 64)).astype(np.float32))
    state = ImageState(features, size, (768, 1024))
    masks, boxes = ellipse_objects(gen, size, count)
    return state, masks, boxes


def grads(family) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, module in family.modules.items():
        for name, param in module.named_parameters():
            if param.grad is None:  # not used by this prompt (e.g. the multimask outputs' layers for a box)
                out[f"{prefix}.{name}"] = torch.zeros_like(param)
            else:
                out[f"{prefix}.{name}"] = param.grad.detach().clone()
            param.grad = None
    return out


def run_step(family, state, targets, boxes, settings, seed):
    draws = draw(np.random.default_rng(seed), len(targets), settings)
    stats = train_image(family, state, targets, boxes, draws, settings, scale=1.0 / len(targets))
    return stats, grads(family)


@pytest.mark.parametrize("box_share", [1.0, 0.0], ids=["box", "one-point-multimask"])
def test_training_step_matches_official(weights, box_share):
    """A whole first-prompt step (noisy boxes, or single points with three outputs and the
    lowest-loss one back-propagated), prompt encoder trained too."""
    ours, theirs = families(weights)
    state, masks, boxes = batch(1)
    targets = np.stack([ours.low_res_target(m, state) >= 0.5 for m in masks])
    settings = PromptSettings(iterations=1, box_share=box_share)
    ours_stats, ours_grads = run_step(ours, state, targets, boxes, settings, 5)
    their_stats, their_grads = run_step(theirs, state, targets, boxes, settings, 5)
    assert ours_stats.prompts == their_stats.prompts == len(masks)
    assert ours_stats.total == pytest.approx(their_stats.total, rel=1e-5)
    assert ours_stats.iou == pytest.approx(their_stats.iou, rel=1e-4, abs=1e-7)
    assert_same_gradients(ours_grads, their_grads)
    assert len(ours_grads) == sum(1 for m in theirs.modules.values() for _ in m.parameters())
    used = [name for name, g in their_grads.items() if float(g.abs().max()) > 0]
    assert len(used) > 0.7 * len(their_grads)
    assert any(name.startswith("prompt_encoder.") for name in used)


@pytest.mark.parametrize("with_box", [True, False], ids=["box+points+mask", "points+mask"])
def test_correction_iteration_matches_official(weights, with_box):
    """What a correction iteration feeds the networks: earlier prompts plus points of both labels,
    and the previous low-res logits as the mask input (through the prompt encoder's mask
    downscaling), one output mask."""
    ours, theirs = families(weights)
    state, masks, boxes = batch(2, count=4)
    valid = torch.from_numpy(ours.valid_cells(state))
    target = torch.from_numpy(np.stack([ours.low_res_target(m, state) >= 0.5 for m in masks])).float()
    gen = np.random.default_rng(3)
    coords = torch.from_numpy(ours.prompt_points(gen.uniform(0, 480, (4, 3, 2)), state)).float()
    labels = torch.tensor([[1, 0, 1]] * 4)
    prompt_boxes = torch.from_numpy(ours.prompt_boxes(boxes, state)).float() if with_box else None
    mask_input = torch.from_numpy(gen.standard_normal((4, 1, 256, 256)).astype(np.float32) * 5)
    results = []
    for family in (ours, theirs):
        out = family.decode(state, coords, labels, prompt_boxes, mask_input, False)
        loss = mask_loss(out.low_res_logits, out.iou_predictions, target, valid)
        loss.total.mean().backward()
        results.append((float(loss.total.detach().sum()), grads(family)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert_same_gradients(results[0][1], results[1][1])


def test_parity_check_sees_a_wrong_gradient(weights):
    """The comparison is sharp: one weight of the official decoder moved by 1% changes the
    gradients beyond the tolerance."""
    ours, theirs = families(weights)
    with torch.no_grad():
        theirs.mask_decoder.transformer.layers[1].mlp.lin1.weight.mul_(1.01)
    state, masks, boxes = batch(1)
    targets = np.stack([ours.low_res_target(m, state) >= 0.5 for m in masks])
    settings = PromptSettings(iterations=1, box_share=1.0)
    _, ours_grads = run_step(ours, state, targets, boxes, settings, 5)
    _, their_grads = run_step(theirs, state, targets, boxes, settings, 5)
    with pytest.raises(AssertionError):
        assert_same_gradients(ours_grads, their_grads)
