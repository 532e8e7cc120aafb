"""One training step on one image's objects, and the held-out validation.

Prompts are simulated from each ground-truth mask as SAM was trained (SAM paper, App. A):
the first prompt is the object's box with noise (each coordinate moved by a normal draw with a
standard deviation of 10% of the box side, at most 20 px in the model's 1024-px frame) or one
point inside the mask, with equal probability by default; then each further iteration adds one
point drawn uniformly from the error region of the previous prediction (positive where the
object was missed, negative where the mask spilled over) and feeds the previous prediction's
low-res logits back as the mask input. Only the first prompt of a single point asks for three
masks (SAM's ambiguity outputs); a box or several points ask for one.

The fed-back logits are detached, as in SAM and sam2 training, so each iteration's graph stands
alone: it is back-propagated at once, which bounds memory to one decoder call. Gradients
accumulate over iterations and objects: the optimised loss is the sum over iterations of the
per-object loss, averaged over the objects of an optimiser step.

Every random draw comes from the generator passed in, in a fixed order and number that does not
depend on the model's outputs, so a run is a function of its seed.
"""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..image_state import ImageState
from . import defaults
from .family import TrainingFamily
from .loss import mask_loss

BOX_NOISE = 0.1  # standard deviation, share of the box side (SAM paper)
BOX_NOISE_MAX = 20.0  # px in the model's frame (SAM paper)


class PromptSettings(NamedTuple):
    iterations: int = defaults.PROMPT_ITERATIONS
    box_share: float = defaults.BOX_SHARE
    box_noise: float = BOX_NOISE
    box_noise_max: float = BOX_NOISE_MAX


class StepStats(NamedTuple):
    """Loss sums over the objects and iterations of a step (what the log reports, per prompt)."""

    total: float = 0.0
    focal: float = 0.0
    dice: float = 0.0
    iou: float = 0.0
    prompts: int = 0

    def __add__(self, other: "StepStats") -> "StepStats":  # type: ignore[override]
        return StepStats(*(a + b for a, b in zip(self, other)))


class Draws(NamedTuple):
    """Every random number one image's objects use in a step, drawn up front."""

    is_box: np.ndarray  # (B,) bool
    box_noise: np.ndarray  # (B, 4) standard normal
    picks: np.ndarray  # (iterations, B) uniform: which cell of the region a point falls in
    jitter: np.ndarray  # (iterations, B, 2) uniform: where in that cell


def draw(rng: np.random.Generator, count: int, settings: PromptSettings) -> Draws:
    return Draws(
        rng.random(count) < settings.box_share,
        rng.standard_normal((count, 4)),
        rng.random((settings.iterations, count)),
        rng.random((settings.iterations, count, 2)),
    )


def noisy_boxes(boxes: np.ndarray, noise: np.ndarray, extent: tuple[float, float], settings: PromptSettings):
    """Prompt-frame XYXY boxes moved by `noise` (standard normal, (B, 4)) scaled to a share of
    each side, capped, and clipped to the image extent (width, height)."""
    box_width, box_height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sides = np.stack([box_width, box_height, box_width, box_height], axis=1)
    moved = boxes + np.clip(noise * settings.box_noise * sides, -settings.box_noise_max, settings.box_noise_max)
    width, height = extent
    moved[:, [0, 2]] = moved[:, [0, 2]].clip(0, width)
    moved[:, [1, 3]] = moved[:, [1, 3]].clip(0, height)
    x0, x1 = np.minimum(moved[:, 0], moved[:, 2]), np.maximum(moved[:, 0], moved[:, 2])
    y0, y1 = np.minimum(moved[:, 1], moved[:, 3]), np.maximum(moved[:, 1], moved[:, 3])
    return np.stack([x0, y0, x1, y1], axis=1)


def pick_cells(regions: np.ndarray, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each (h, w) bool region of a (B, h, w) stack, the cell that the uniform `picks` (B,)
    select among its set cells: rows, cols (B,) and whether the region had any (B,) bool."""
    count, _, width = regions.shape
    rows = np.zeros(count, dtype=np.int64)
    cols = np.zeros(count, dtype=np.int64)
    found = np.zeros(count, dtype=bool)
    for i in range(count):
        cells = np.flatnonzero(regions[i])
        if cells.size:
            cell = cells[min(int(picks[i] * cells.size), cells.size - 1)]
            rows[i], cols[i], found[i] = cell // width, cell % width, True
    return rows, cols, found


def cell_prompts(family: TrainingFamily, rows, cols, jitter: np.ndarray) -> np.ndarray:
    """Prompt-frame points uniformly inside the given low-res cells: (B, 2)."""
    return family.cell_points(rows, cols) + jitter * family.cell_size


def train_image(
    family: TrainingFamily,
    state: ImageState,
    targets: np.ndarray,
    boxes: np.ndarray,
    draws: Draws,
    settings: PromptSettings,
    scale: float,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> StepStats:
    """Run the prompt iterations for B objects of one image and back-propagate their loss.

    targets (B, h, w) bool on the low-res grid; boxes (B, 4) the objects' XYXY boxes in image
    pixels; draws from `draw`; `scale` multiplies the loss before backward (1 / objects in the
    optimiser step); `backward(loss)` defaults to loss.backward() (a GradScaler's goes here).
    """
    device = state.features.device
    valid_np = family.valid_cells(state)
    valid = torch.from_numpy(valid_np).to(device)
    truth = targets & valid_np
    target_t = torch.from_numpy(targets).to(device=device, dtype=torch.float32)
    clean_boxes = family.prompt_boxes(boxes, state)
    extent = family.prompt_extent(state)
    stats = StepStats()
    for is_box in (True, False):  # box-first and point-first objects: different prompt layouts
        index = np.flatnonzero(draws.is_box == is_box)
        if index.size == 0:
            continue
        box_t = None
        if is_box:
            prompt_boxes = noisy_boxes(clean_boxes[index], draws.box_noise[index], extent, settings)
            box_t = torch.as_tensor(prompt_boxes, dtype=torch.float32, device=device)
            coords = np.zeros((index.size, 0, 2))
            labels = np.zeros((index.size, 0), dtype=np.int64)
        else:
            rows, cols, _ = pick_cells(truth[index], draws.picks[0, index])
            coords = cell_prompts(family, rows, cols, draws.jitter[0, index])[:, None]
            labels = np.ones((index.size, 1), dtype=np.int64)
        mask_input = previous = None
        for iteration in range(settings.iterations):
            if iteration > 0:
                # a correction point from where the previous prediction was wrong
                predicted = (previous > 0).cpu().numpy()[:, 0]
                missed = truth[index] & ~predicted
                error = (truth[index] ^ predicted) & valid_np
                rows, cols, found = pick_cells(error, draws.picks[iteration, index])
                inside_rows, inside_cols, _ = pick_cells(truth[index], draws.picks[iteration, index])
                rows, cols = np.where(found, rows, inside_rows), np.where(found, cols, inside_cols)
                positive = np.where(found, missed[np.arange(index.size), rows, cols], True)
                point = cell_prompts(family, rows, cols, draws.jitter[iteration, index])[:, None]
                coords = np.concatenate([coords, point], axis=1)
                labels = np.concatenate([labels, positive.astype(np.int64)[:, None]], axis=1)
                mask_input = previous
            coords_t = labels_t = None
            if coords.shape[1]:
                coords_t = torch.as_tensor(coords, dtype=torch.float32, device=device)
                labels_t = torch.as_tensor(labels, dtype=torch.int64, device=device)
            multimask = box_t is None and coords.shape[1] == 1
            with autocast():
                out = family.decode(state, coords_t, labels_t, box_t, mask_input, multimask)
            loss = mask_loss(out.low_res_logits, out.iou_predictions, target_t[index], valid, out.object_score_logits,
                             family.iou_loss)
            total = loss.total.sum() * scale
            if backward is None:
                total.backward()
            else:
                backward(total)
            with torch.no_grad():
                best = out.iou_predictions.argmax(dim=1)
                rows_t = torch.arange(index.size, device=device)
                previous = out.low_res_logits[rows_t, best][:, None].detach().float()
            stats = stats + StepStats(*(float(part.detach().sum()) for part in loss[:4]), int(index.size))
    return stats


class Validation(NamedTuple):
    """Held-out mean IoU at the image's resolution, from the tight box and from one point."""

    miou_box: float
    miou_point: float
    objects: int

    @property
    def score(self) -> float:
        """What selects the best epoch: the mean of the two."""
        return (self.miou_box + self.miou_point) / 2


def interior_point(mask: np.ndarray) -> np.ndarray:
    """The pixel deepest inside a mask (largest distance to its border), as XY."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([col, row], dtype=np.float64)


def mask_ious(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool each -> (B,) IoU (1 where both are empty)."""
    intersection = (predicted & truth).flatten(1).sum(1).double()
    union = (predicted | truth).flatten(1).sum(1).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


@torch.no_grad()
def validate_image(
    family: TrainingFamily,
    state: ImageState,
    masks: np.ndarray,
    boxes: np.ndarray,
    points: np.ndarray,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    chunk: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """IoU of each object's mask from its tight box (one mask) and from its interior point (the
    best-scored of three): masks (B, H, W) bool, boxes (B, 4) and points (B, 2) in image pixels
    -> (box IoUs (B,), point IoUs (B,))."""
    device = state.features.device
    box_ious, point_ious = [], []
    for start in range(0, len(masks), chunk):
        part = slice(start, start + chunk)
        truth = torch.from_numpy(masks[part]).to(device)
        box_t = torch.as_tensor(family.prompt_boxes(boxes[part], state), dtype=torch.float32, device=device)
        coords = torch.as_tensor(family.prompt_points(points[part][:, None], state), dtype=torch.float32,
                                 device=device)
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=device)
        with autocast():
            by_box = family.decode(state, None, None, box_t, None, False)
            by_point = family.decode(state, coords, labels, None, None, True)
        box_logits = by_box.low_res_logits[:, 0].float()
        best = by_point.iou_predictions.argmax(dim=1)
        point_logits = by_point.low_res_logits[torch.arange(len(best), device=device), best].float()
        box_ious.append(mask_ious(family.logits_to_image(box_logits, state) > 0, truth).cpu())
        point_ious.append(mask_ious(family.logits_to_image(point_logits, state) > 0, truth).cpu())
    return torch.cat(box_ious).numpy(), torch.cat(point_ious).numpy()
