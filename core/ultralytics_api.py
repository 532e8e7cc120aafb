"""`samkit.SAM`: the calling convention Ultralytics' documentation teaches, on samkit's models.

    model = SAM("mobile_sam.pt")
    model.info()
    model("image.jpg", bboxes=[439, 437, 524, 709])                       # one box
    model("image.jpg", points=[900, 370], labels=[1])                     # one point
    model("image.jpg", points=[[400, 370], [900, 370]], labels=[1, 1])     # two objects, one point each
    model("image.jpg", points=[[[400, 370], [900, 370]]], labels=[[1, 0]]) # one object, two points
    model("image.jpg")                                                    # segment everything
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .utils import mask_utils
from .build import load_model
from .errors import PromptError
from .utils.files import atomic_output, output_directory
from .utils.image_io import ImageLike, load_image
from .mask_generator import GenerationStats, MaskGenerator, ProgressCallback
from .predictor import Predictor, check_prompts
from .utils.visualize import overlay_masks, save_png


@dataclass
class Result:
    """Masks for one image: masks (N, H, W) bool, boxes (N, 4) XYXY, scores (N,)."""

    orig_img: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    path: str | None = None
    prompts: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.masks)

    def plot(self) -> np.ndarray:
        """The image with masks, boxes and prompt points drawn on it (HxWx3 uint8 RGB)."""
        return overlay_masks(
            self.orig_img, self.masks, boxes=self.prompts.get("boxes"),
            points=self.prompts.get("points"), point_labels=self.prompts.get("labels"),
        )

    def save(self, filename: str | os.PathLike = "overlay.png") -> str:
        """Write `plot()` as a PNG and return its path (its folder must exist: OutputError)."""
        save_png(filename, self.plot())
        return str(filename)

    def save_masks(self, directory: str | os.PathLike) -> list[str]:
        """One PNG per mask (0 / 255) in `directory` (created; the folder above it must exist);
        returns the paths."""
        directory = output_directory(directory)
        paths = []
        for i, mask in enumerate(self.masks):
            path = directory / f"mask_{i:04d}.png"
            save_png(path, mask.astype(np.uint8) * 255)
            paths.append(str(path))
        return paths

    def to_coco(self) -> list[dict[str, Any]]:
        """COCO-style annotations: RLE segmentation, XYWH bbox, area, score."""
        out = []
        for i, (mask, score) in enumerate(zip(self.masks, self.scores)):
            rle = mask_utils.mask_to_rle(mask)
            x0, y0, x1, y1 = (float(v) for v in self.boxes[i])
            out.append(
                {
                    "id": i + 1,
                    "segmentation": rle,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": mask_utils.area(mask),
                    "score": float(score),
                }
            )
        return out

    def save_json(self, filename: str | os.PathLike) -> str:
        height, width = self.orig_img.shape[:2]
        doc = {"image": {"file_name": self.path, "height": height, "width": width}, "annotations": self.to_coco()}
        with atomic_output(filename) as tmp:
            tmp.write_text(json.dumps(doc))
        return str(filename)


class SAM:
    """A SAM-family model called like Ultralytics' `SAM`: prompts in, `Result` objects out."""

    def __init__(
        self,
        model: str | os.PathLike = "mobile_sam.pt",
        device: str | None = None,
        dtype: str | None = None,
        **generator_options: Any,
    ) -> None:
        self.model = load_model(model, device=device, dtype=dtype)
        self.predictor = Predictor(self.model)
        self.generator_options = generator_options
        self.last_stats: GenerationStats | None = None  # of the last segment-everything call

    def info(self, verbose: bool = True) -> dict[str, Any]:
        """Print and return the architecture, parameter count, size and device."""
        params = self.model.num_parameters()
        info = {
            "arch": self.model.arch,
            "parameters": params,
            "size_mb": round(params * 4 / 1e6, 1),
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "checkpoint": getattr(self.model, "checkpoint_path", None),
        }
        if verbose:
            print(
                f"{info['arch']}: {params:,} parameters, {info['size_mb']} MB as float32, "
                f"device {info['device']}, compute {info['dtype']}, checkpoint {info['checkpoint']}"
            )
        return info

    def __call__(
        self, source: ImageLike | Sequence[ImageLike], bboxes=None, points=None, labels=None,
        multimask_output: bool = False, progress: ProgressCallback | None = None,
    ) -> list[Result]:
        return self.predict(source, bboxes=bboxes, points=points, labels=labels, multimask_output=multimask_output,
                            progress=progress)

    def predict(
        self, source: ImageLike | Sequence[ImageLike], bboxes=None, points=None, labels=None,
        multimask_output: bool = False, progress: ProgressCallback | None = None,
    ) -> list[Result]:
        """Segment each source. Without prompts every object is segmented (segment everything);
        then `progress(done, total)` is called as the grid's prompts are decoded and
        `last_stats` (GenerationStats) says how many candidates passed each threshold."""
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        results = []
        for item in sources:
            image = load_image(item)
            path = str(item) if isinstance(item, (str, os.PathLike)) else None
            if bboxes is None and points is None:
                results.append(self._everything(image, path, progress))
            else:
                results.append(self._prompted(image, path, bboxes, points, labels, multimask_output))
        return results

    def _everything(self, image: np.ndarray, path: str | None, progress: ProgressCallback | None = None) -> Result:
        generator = MaskGenerator(self.model, predictor=self.predictor, **self.generator_options)
        records = generator.generate(image, progress=progress)
        self.last_stats = generator.last_stats
        if not records:
            empty = np.zeros((0, *image.shape[:2]), dtype=bool)
            return Result(image, empty, np.zeros((0, 4)), np.zeros(0), path)
        masks = np.stack([r["segmentation"] for r in records])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)], dtype=float)
        scores = np.array([r["predicted_iou"] for r in records])
        return Result(image, masks, boxes, scores, path)

    def _prompted(self, image, path, bboxes, points, labels, multimask_output) -> Result:
        point_sets, label_sets, box_array = nest_prompts(bboxes, points, labels)
        check_prompts(image.shape[:2], point_sets, label_sets, box_array)  # before the encoder runs
        self.predictor.set_image(image)
        masks, scores, _ = self.predictor.predict_batch(
            point_sets, label_sets, box_array, multimask_output=multimask_output, return_low_res=False
        )
        # Keep the best-scoring mask per object, as Ultralytics does.
        best = scores.argmax(axis=1)
        index = np.arange(len(best))
        masks, scores = masks[index, best], scores[index, best]
        boxes = np.array([xywh_to_xyxy(mask_utils.mask_to_box(m)) for m in masks], dtype=float).reshape(-1, 4)
        prompts = {"boxes": box_array, "points": point_sets, "labels": label_sets}
        return Result(image, masks, boxes, scores, path, prompts)


def xywh_to_xyxy(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def nest_prompts(bboxes, points, labels) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Ultralytics' nesting rules -> (point sets (B, N, 2), labels (B, N), boxes (B, 4)).

    points (2,) is one object with one point; (N, 2) is N objects with one point each;
    (B, N, 2) is B objects with N points each. labels follow the same nesting (default all 1).
    A box (4,) is one object; (B, 4) are B objects; given with points, there is one point set per box.
    """
    box_array = None
    if bboxes is not None:
        box_array = np.asarray(bboxes, dtype=float)
        if box_array.ndim == 1:
            box_array = box_array[None]
        if box_array.ndim != 2 or box_array.shape[1] != 4:
            raise PromptError(f"bboxes must be [x0, y0, x1, y1] or a list of them, got shape {box_array.shape}")
    if points is None:
        if labels is not None:
            raise PromptError("labels were given without points")
        return None, None, box_array
    point_array = np.asarray(points, dtype=float)
    if point_array.ndim == 1:
        point_array = point_array[None]
    if point_array.ndim not in (2, 3) or point_array.shape[-1] != 2:
        raise PromptError(
            f"points must be [x, y], a list of [x, y], or a list of lists of [x, y]; got shape {point_array.shape}"
        )
    label_array = (
        np.ones(point_array.shape[:-1], dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    )
    if label_array.ndim == 0:
        label_array = label_array[None]
    if point_array.shape[-2] != label_array.shape[-1] or label_array.size != point_array.size // 2:
        raise PromptError(f"{point_array.size // 2} points but {label_array.size} labels: give one label per point")
    if point_array.ndim == 2:
        point_array, label_array = point_array[:, None, :], label_array.reshape(-1)[:, None]
    if box_array is not None and len(box_array) != len(point_array):
        if len(point_array) == 1:
            point_array = np.repeat(point_array, len(box_array), axis=0)
            label_array = np.repeat(label_array, len(box_array), axis=0)
        else:
            raise PromptError(f"{len(box_array)} boxes but {len(point_array)} point sets: give one point set per box")
    return point_array, label_array, box_array
