"""Segment everything: prompt the model with a grid of points and keep the good, distinct masks.

Same parameters, filters and record format as segment-anything's SamAutomaticMaskGenerator, with
the work reordered so that nothing is computed for masks that are thrown away: predicted-IoU
filtering happens on the 256x256 logits before any upscaling, upscaling runs in small chunks
(on a CPU with OpenCV, see Predictor.logits_at_image_size), and masks are run-length encoded by
pycocotools in one call per batch.
"""

from __future__ import annotations

import math
from itertools import product
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .utils import mask_utils
from .utils.image_io import ImageLike, load_image
from .options import SAM1_GENERATOR_DEFAULTS, GeneratorOptions  # noqa: F401 (their names here since issue 18)
from .predictor import UPSCALE_CHUNK, Predictor
from .modeling.sam import Sam

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

#: generate()'s progress callback: (prompts done, prompts in all), called after each batch
ProgressCallback = Callable[[int, int], None]


@dataclass
class GenerationStats:
    """What one generate() call saw, for telling a user why few or no masks came out.

    candidates: masks the decoder proposed (3 per grid point); above_iou: those whose predicted
    IoU passed pred_iou_thresh; above_stability: those that also passed stability_score_thresh;
    kept: records returned (after NMS and small-region removal); best_iou: the highest predicted
    IoU of any candidate (None before the first batch)."""

    candidates: int = 0
    above_iou: int = 0
    above_stability: int = 0
    kept: int = 0
    best_iou: float | None = None
    pred_iou_thresh: float | None = None  # the thresholds that were applied
    stability_score_thresh: float | None = None


class MaskGenerator:
    """Automatic mask generation with segment-anything's parameters and record keys.

    The keyword arguments are GeneratorOptions' (pred_iou_thresh None: the model family's
    default); `options` gives them as one record instead (keywords then override it)."""

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        predictor: Predictor | None = None,
        options: GeneratorOptions | None = None,
        mask_threshold: float | None = None,
        use_m2m: bool = False,
        multimask_output: bool = True,
    ) -> None:
        given = {
            "points_per_side": points_per_side, "points_per_batch": points_per_batch,
            "pred_iou_thresh": pred_iou_thresh, "stability_score_thresh": stability_score_thresh,
            "stability_score_offset": stability_score_offset, "box_nms_thresh": box_nms_thresh,
            "crop_n_layers": crop_n_layers, "crop_nms_thresh": crop_nms_thresh,
            "crop_overlap_ratio": crop_overlap_ratio, "crop_n_points_downscale_factor": crop_n_points_downscale_factor,
            "min_mask_region_area": min_mask_region_area, "output_mode": output_mode,
            "mask_threshold": mask_threshold, "use_m2m": use_m2m, "multimask_output": multimask_output,
        }
        if options is not None:  # the record, with the keywords that differ from the defaults on top
            plain = GeneratorOptions()
            given = {**{n: getattr(options, n) for n in GeneratorOptions.names()},
                     **{n: v for n, v in given.items() if v != getattr(plain, n)}}
        self.options = GeneratorOptions(**given).resolved(model)
        opts = self.options
        points_per_side, points_per_batch = opts.points_per_side, opts.points_per_batch
        crop_n_layers, output_mode = opts.crop_n_layers, opts.output_mode
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if points_per_batch < 1:
            raise ValueError("points_per_batch must be at least 1")
        if points_per_side is not None:
            downscale = opts.crop_n_points_downscale_factor
            point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, downscale)
        if len(point_grids) != crop_n_layers + 1:
            raise ValueError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}), got {len(point_grids)}")
        self.predictor = predictor if predictor is not None else Predictor(model, cache_size=2)
        self.model = model
        self.point_grids = point_grids
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = opts.pred_iou_thresh
        self.stability_score_thresh = opts.stability_score_thresh
        self.stability_score_offset = opts.stability_score_offset
        self.box_nms_thresh = opts.box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = opts.crop_nms_thresh
        self.crop_overlap_ratio = opts.crop_overlap_ratio
        self.min_mask_region_area = opts.min_mask_region_area
        self.output_mode = output_mode
        self.mask_threshold = opts.mask_threshold
        self.use_m2m = opts.use_m2m
        self.multimask_output = opts.multimask_output
        self.last_stats = GenerationStats()
        self._progress: ProgressCallback | None = None
        self._done = self._total = 0

    @torch.inference_mode()
    def generate(self, image: ImageLike, progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
        """HxWx3 uint8 RGB image (or a path / PIL image) -> one record per mask:
        segmentation, area, bbox (XYWH), predicted_iou, point_coords, stability_score, crop_box (XYWH).

        progress, if given, is called as progress(prompts_done, prompts_total) after each batch of
        grid points (a command line draws its bar with it). `last_stats` then says how many
        candidates passed each threshold (GenerationStats)."""
        image = load_image(image)
        previous_state = self.predictor.current_state
        self.last_stats = GenerationStats(pred_iou_thresh=self.pred_iou_thresh,
                                          stability_score_thresh=self.stability_score_thresh)
        self._progress, self._done = progress, 0
        crop_boxes, layer_idxs = generate_crop_boxes(image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio)
        self._total = sum(len(self.point_grids[layer]) for layer in layer_idxs)
        try:
            data = self._generate_masks(image)
        finally:
            self._progress = None
            # A predictor shared with interactive use keeps pointing at the image it had.
            self.predictor.set_image_state(previous_state)
        if self.min_mask_region_area > 0:
            data = self._remove_small_regions(data, max(self.box_nms_thresh, self.crop_nms_thresh))
        records = []
        for i, rle in enumerate(data["rles"]):
            if self.output_mode == "coco_rle":
                segmentation: Any = rle
            elif self.output_mode == "binary_mask":
                segmentation = mask_utils.rle_to_mask(rle)
            else:
                segmentation = mask_utils.compressed_to_uncompressed_rle(rle)
            records.append(
                {
                    "segmentation": segmentation,
                    "area": mask_utils.area(rle),
                    "bbox": mask_utils.box_xyxy_to_xywh(data["boxes"][i]),
                    "predicted_iou": float(data["iou_preds"][i]),
                    "point_coords": [data["points"][i].tolist()],
                    "stability_score": float(data["stability_score"][i]),
                    "crop_box": mask_utils.box_xyxy_to_xywh(data["crop_boxes"][i]),
                }
            )
        self.last_stats.kept = len(records)
        return records

    # -- stages -----------------------------------------------------------------------------
    def _generate_masks(self, image: np.ndarray) -> dict[str, Any]:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        parts = [self._process_crop(image, box, layer, orig_size) for box, layer in zip(crop_boxes, layer_idxs)]
        data = concat_data(parts)
        if len(crop_boxes) > 1 and len(data["rles"]):
            # Between crops prefer masks from smaller crops (they saw the object at higher resolution).
            crop_areas = (data["crop_boxes"][:, 2] - data["crop_boxes"][:, 0]) * (
                data["crop_boxes"][:, 3] - data["crop_boxes"][:, 1]
            )
            keep = mask_utils.nms(data["boxes"], 1.0 / crop_areas, self.crop_nms_thresh)
            data = filter_data(data, keep)
        return data

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], layer_idx: int, orig_size: tuple[int, int]
    ) -> dict[str, Any]:
        x0, y0, x1, y1 = crop_box
        cropped = np.ascontiguousarray(image[y0:y1, x0:x1, :])
        crop_h, crop_w = cropped.shape[:2]
        self.predictor.set_image(cropped)
        points_for_image = self.point_grids[layer_idx] * np.array([[crop_w, crop_h]])
        parts = []
        for start in range(0, len(points_for_image), self.points_per_batch):
            points = points_for_image[start : start + self.points_per_batch]
            parts.append(self._process_batch(points, (crop_h, crop_w), crop_box, orig_size))
            self._done += len(points)
            if self._progress is not None:
                self._progress(self._done, self._total)
        data = concat_data(parts)
        keep = mask_utils.nms(data["boxes"], data["iou_preds"], self.box_nms_thresh)
        data = filter_data(data, keep)
        data["boxes"] = data["boxes"] + np.array([x0, y0, x0, y0])
        data["points"] = data["points"] + np.array([x0, y0])
        data["crop_boxes"] = np.tile(np.array(crop_box), (len(data["rles"]), 1))
        return data

    def _process_batch(
        self, points: np.ndarray, im_size: tuple[int, int], crop_box: list[int], orig_size: tuple[int, int]
    ) -> dict[str, Any]:
        device = self.model.device
        frame = self.model.to_input_frame(points, self.predictor.image_state)
        coords = torch.as_tensor(frame, dtype=torch.float, device=device)
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=device)
        # Low-res logits of the tokens that cover the crop only: no record keeps them (with use_m2m
        # they are the next mask prompt, which covers the whole grid).
        region = None if self.use_m2m else self.predictor.mask_region()
        low_res, iou_preds = self.predictor.decode_low_res(
            coords[:, None, :], labels, multimask_output=self.multimask_output, region=region
        )
        num_masks = low_res.shape[1]
        low_res = low_res.flatten(0, 1)
        iou_preds = iou_preds.flatten(0, 1)
        mask_points = np.repeat(points, num_masks, axis=0)
        if self.use_m2m:
            low_res, iou_preds = self._refine_with_own_masks(coords.repeat_interleave(num_masks, dim=0), low_res)

        # The predicted-IoU filter needs no pixels: apply it before upscaling anything.
        keep = torch.ones_like(iou_preds, dtype=torch.bool)
        if self.pred_iou_thresh > 0.0:
            keep = iou_preds > self.pred_iou_thresh
        index = torch.nonzero(keep).flatten()
        stats = self.last_stats
        stats.candidates += len(iou_preds)
        stats.above_iou += len(index)
        if len(iou_preds):
            best = float(iou_preds.max())
            stats.best_iou = best if stats.best_iou is None else max(stats.best_iou, best)

        threshold = self.mask_threshold
        kept_index, stability, masks = [], [], []
        for start in range(0, len(index), UPSCALE_CHUNK):
            chunk = index[start : start + UPSCALE_CHUNK]
            logits = self.predictor.logits_at_image_size(low_res[chunk])
            score = calculate_stability_score(logits, threshold, self.stability_score_offset)
            if self.stability_score_thresh > 0.0:
                passed = score >= self.stability_score_thresh
                chunk, score, logits = chunk[passed], score[passed], logits[passed]
            kept_index.append(chunk)
            stability.append(score)
            # Thresholded straight into column-major order (N, W, H), the order of COCO RLE:
            # as fast as a plain comparison, and no transposed copy of the masks later.
            column_major = torch.empty(
                (len(chunk), logits.shape[2], logits.shape[1]), dtype=torch.bool, device=logits.device
            )
            masks.append(torch.gt(logits.transpose(1, 2), threshold, out=column_major))
        stats.above_stability += sum(len(chunk) for chunk in kept_index)
        if kept_index:
            index = torch.cat(kept_index)
            stability_t = torch.cat(stability)
            masks_cm = torch.cat(masks)
        else:
            index = index[:0]
            stability_t = torch.zeros(0)
            masks_cm = torch.zeros((0, im_size[1], im_size[0]), dtype=torch.bool)

        boxes = mask_utils.batched_mask_to_box(masks_cm.transpose(1, 2))
        orig_h, orig_w = orig_size
        near_edge = is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        if near_edge.any():
            inside = ~near_edge
            index, stability_t, masks_cm, boxes = index[inside], stability_t[inside], masks_cm[inside], boxes[inside]
        masks = uncrop_masks(masks_cm.transpose(1, 2), crop_box, orig_h, orig_w)
        index_np = index.cpu().numpy()
        return {
            "rles": mask_utils.masks_to_rle(masks),
            "iou_preds": iou_preds[index].cpu().numpy(),
            "points": mask_points[index_np].reshape(-1, 2),
            "stability_score": stability_t.cpu().numpy(),
            "boxes": boxes.cpu().numpy().reshape(-1, 4),
        }

    def _refine_with_own_masks(self, coords: torch.Tensor, low_res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM 2's use_m2m: each candidate decoded again from its grid point (coords (N, 2), input
        frame) with its own low-res logits (N, 256, 256), bounded as the predictor returns them, as
        the mask prompt, single-mask; -> the refined low-res logits (N, h, w) and IoU predictions (N,)
        that replace the candidates'. In batches of points_per_batch, as the official does."""
        masks, scores = [], []
        region = self.predictor.mask_region()
        for start in range(0, len(coords), self.points_per_batch):
            points = coords[start : start + self.points_per_batch, None, :]
            labels = torch.ones(points.shape[:2], dtype=torch.int, device=points.device)
            mask_input = self.model.clamp_low_res(low_res[start : start + self.points_per_batch, None])
            refined, iou = self.predictor.decode_low_res(
                points, labels, mask_input=mask_input, multimask_output=False, region=region
            )
            masks.append(refined[:, 0])
            scores.append(iou[:, 0])
        if not masks:
            return low_res, low_res.new_zeros(0)
        return torch.cat(masks), torch.cat(scores)

    def _remove_small_regions(self, data: dict[str, Any], nms_thresh: float) -> dict[str, Any]:
        """Fill small holes and drop small islands; re-run NMS preferring unchanged masks."""
        if len(data["rles"]) == 0:
            return data
        masks, scores = [], []
        for rle in data["rles"]:
            mask = mask_utils.rle_to_mask(rle)
            mask, changed_holes = mask_utils.remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, changed_islands = mask_utils.remove_small_regions(mask, self.min_mask_region_area, "islands")
            masks.append(mask)
            scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
        boxes = mask_utils.batched_mask_to_box(torch.as_tensor(np.stack(masks))).numpy()
        keep = mask_utils.nms(boxes, np.array(scores), nms_thresh)
        data = dict(data)
        data["rles"] = list(data["rles"])
        data["boxes"] = data["boxes"].copy()
        for i in keep:
            if scores[i] == 0.0:
                data["rles"][i] = mask_utils.mask_to_rle(masks[i])
                data["boxes"][i] = boxes[i]
        return filter_data(data, keep)


# -- helpers (the reference generator's building blocks, same semantics) -------------------------
def build_point_grid(n_per_side: int) -> np.ndarray:
    """n x n points evenly spaced in [0, 1]^2, cell centres, XY."""
    offset = 1 / (2 * n_per_side)
    one_side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(one_side[None, :], (n_per_side, 1))
    ys = np.tile(one_side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One point grid per crop layer, each layer with scale_per_layer times fewer points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes: the whole image, then 2^i x 2^i overlapping crops in layer i."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layer_idxs = [0]
    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = int(math.ceil((overlap * (n_crops_per_side - 1) + im_w) / n_crops_per_side))
        crop_h = int(math.ceil((overlap * (n_crops_per_side - 1) + im_h) / n_crops_per_side))
        xs = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        ys = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(xs, ys):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def calculate_stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU between the masks thresholded at mask_threshold + offset and - offset."""
    # int16 per row then int32, as the reference, so counts agree on every image size it supports.
    intersections = (logits > (mask_threshold + offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    unions = (logits > (mask_threshold - offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return intersections / unions


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """Boxes (crop frame) touching a crop edge that is not also an image edge."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    x0, y0 = crop_box[0], crop_box[1]
    uncropped = (boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)).float()
    near_crop = torch.isclose(uncropped, crop[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(uncropped, orig[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_image, dim=1)


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """Masks (N, h, w) of a crop -> masks (N, H, W) of the whole image (zero outside the crop),
    in the memory order of `masks`: a column-major view (COCO RLE's order) stays one."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    if masks.dim() == 3 and not masks.is_contiguous() and masks.transpose(1, 2).is_contiguous():
        return F.pad(masks.transpose(1, 2), (y0, pad_y - y0, x0, pad_x - x0), value=0).transpose(1, 2)
    return F.pad(masks, (x0, pad_x - x0, y0, pad_y - y0), value=0)


def concat_data(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-batch/per-crop results."""
    if not parts:
        return {"rles": [], "iou_preds": np.zeros(0), "points": np.zeros((0, 2)), "stability_score": np.zeros(0),
                "boxes": np.zeros((0, 4)), "crop_boxes": np.zeros((0, 4))}
    out: dict[str, Any] = {}
    for key in parts[0]:
        if key == "rles":
            out[key] = [rle for part in parts for rle in part[key]]
        else:
            out[key] = np.concatenate([part[key] for part in parts])
    return out


def filter_data(data: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """Select entries by index (order follows `keep`)."""
    keep = np.asarray(keep, dtype=np.int64)
    return {key: ([value[i] for i in keep] if key == "rles" else value[keep]) for key, value in data.items()}
