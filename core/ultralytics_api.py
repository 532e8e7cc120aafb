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
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from .utils import mask_utils
from .build import load_model
from .errors import PromptError
from .utils.files import atomic_output, output_directory
from .utils.image_io import ImageLike, load_image
from .mask_generator import GenerationStats, GeneratorOptions, MaskGenerator, ProgressCallback
from .predictor import Predictor, check_prompts
from .utils.visualize import overlay_masks, save_png


class Masks(np.ndarray):
    """(N, H, W) bool masks: the array `Result.masks` always was, plus the names Ultralytics'
    `Masks` has, so code written for Ultralytics works:

    - `data`: the masks as a torch bool tensor (N, H, W), sharing this array's memory;
    - `xy` / `xyn`: per mask, the outline of its largest part as a float32 (K, 2) array of XY
      pixels / of XY divided by the image's width and height ((0, 2) for an empty mask);
    - `shape`, `len()`, indexing and iteration as for the array (one (H, W) bool array per mask);
    - `cpu()`, `numpy()`: this object / a plain array (Ultralytics moves its tensors with them).
    """

    def __new__(cls, masks) -> "Masks":
        return np.asarray(masks, dtype=bool).view(cls)

    def __array_finalize__(self, obj) -> None:
        self._xy = None

    def __getitem__(self, key):  # a mask, or a selection of masks: plain arrays, as before
        return np.asarray(self)[key]

    def __iter__(self):
        return iter(np.asarray(self))

    @property
    def data(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self))

    @property
    def xy(self) -> list[np.ndarray]:
        if self._xy is None:
            self._xy = [largest_outline(mask) for mask in np.asarray(self).reshape(-1, *self.shape[-2:])]
        return self._xy

    @property
    def xyn(self) -> list[np.ndarray]:
        scale = np.array([self.shape[-1], self.shape[-2]], dtype=np.float32)
        return [points / scale for points in self.xy]

    def cpu(self) -> "Masks":
        return self

    def numpy(self) -> np.ndarray:
        return np.asarray(self)


def largest_outline(mask: np.ndarray) -> np.ndarray:
    """The outer contour of a mask's largest part (by area), float32 (K, 2) XY pixels."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2), dtype=np.float32)
    return max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float32)


class Boxes(np.ndarray):
    """(N, 4) XYXY pixel boxes: the array `Result.boxes` always was, plus the names of
    Ultralytics' `Boxes` (torch tensors, 2-D also for one box, as there):

    - `xyxy` (N, 4); `xywh` (N, 4) as centre x, centre y, width, height; `xyxyn`, `xywhn` the
      same divided by the image's width and height;
    - `conf` (N,) the masks' predicted IoU; `cls` (N,) 0..N-1 (SAM has no classes: Ultralytics'
      placeholder); `data` (N, 6) [x1, y1, x2, y2, conf, cls]; `id` None; `orig_shape` (H, W);
    - indexing rows (`boxes[0]`, `boxes[:3]`, a boolean mask) gives Boxes with their scores, and
      iterating gives one Boxes row per box: `x0, y0, x1, y1 = box` and `box.xyxy[0].tolist()`
      both work. Indexing columns (`boxes[:, 0]`) gives a plain array.
    """

    def __new__(cls, boxes, conf=None, orig_shape: tuple[int, int] = (0, 0)) -> "Boxes":
        array = np.asarray(boxes, dtype=np.float64)
        obj = (array if array.ndim == 1 else array.reshape(-1, 4)).view(cls)  # 1-D: one box's row
        n = len(array.reshape(-1, 4))
        obj._conf = np.zeros(n) if conf is None else np.asarray(conf, dtype=np.float64).reshape(n)
        obj._cls = np.arange(n, dtype=np.float64)
        obj.orig_shape = tuple(orig_shape)
        return obj

    def __array_finalize__(self, obj) -> None:
        self._conf = getattr(obj, "_conf", None)
        self._cls = getattr(obj, "_cls", None)
        self.orig_shape = getattr(obj, "orig_shape", (0, 0))

    def __getitem__(self, key):
        rows = np.asarray(self).reshape(-1, 4)
        if isinstance(key, tuple) or self.ndim != 2:
            return np.asarray(self)[key]
        out = Boxes(rows[key], self._conf[key], self.orig_shape)
        out._cls = np.asarray(self._cls[key], dtype=np.float64).reshape(-1)
        return out

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _rows(self) -> np.ndarray:
        return np.asarray(self).reshape(-1, 4)

    @property
    def xyxy(self) -> torch.Tensor:
        return torch.from_numpy(self._rows().astype(np.float32))

    @property
    def xywh(self) -> torch.Tensor:
        b = self._rows()
        centre = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
        return torch.from_numpy(centre.astype(np.float32))

    def _normalised(self, boxes: torch.Tensor) -> torch.Tensor:
        height, width = self.orig_shape
        return boxes / torch.tensor([width, height, width, height], dtype=boxes.dtype)

    @property
    def xyxyn(self) -> torch.Tensor:
        return self._normalised(self.xyxy)

    @property
    def xywhn(self) -> torch.Tensor:
        return self._normalised(self.xywh)

    @property
    def conf(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._conf, dtype=np.float32).reshape(-1))

    @property
    def cls(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._cls, dtype=np.float32).reshape(-1))

    @property
    def data(self) -> torch.Tensor:
        return torch.cat([self.xyxy, self.conf[:, None], self.cls[:, None]], dim=1)

    @property
    def id(self) -> None:
        return None  # no tracking

    def cpu(self) -> "Boxes":
        return self

    def numpy(self) -> np.ndarray:
        return np.asarray(self)


@dataclass(repr=False)
class Result:
    """Masks for one image: masks (N, H, W) bool (`Masks`), boxes (N, 4) XYXY (`Boxes`), scores
    (N,). `masks` and `boxes` are the arrays they always were and also answer to Ultralytics'
    attribute names (`masks.data`, `masks.xy`, `boxes.xyxy`, `boxes.conf`, ...). `print(result)`
    gives a one-line summary."""

    orig_img: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    path: str | None = None
    prompts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.masks = Masks(self.masks)
        self.boxes = Boxes(self.boxes, self.scores, self.orig_img.shape[:2])

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def orig_shape(self) -> tuple[int, int]:
        return tuple(self.orig_img.shape[:2])

    @property
    def names(self) -> dict[int, str]:
        """Ultralytics' class names: SAM has none, so each mask is its own placeholder class."""
        return {i: str(i) for i in range(len(self))}

    def __repr__(self) -> str:
        height, width = self.orig_shape
        what = f"{len(self)} mask{'s' if len(self) != 1 else ''}"
        if len(self):
            low, high = float(self.scores.min()), float(self.scores.max())
            what += f", score {low:.2f}" if low == high else f", scores {low:.2f}-{high:.2f}"
        source = f"{self.path}, " if self.path else ""
        return f"samkit.Result({source}{width}x{height} image, {what})"

    __str__ = __repr__

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
        multimask_output: bool = False, progress: ProgressCallback | None = None, **everything: Any,
    ) -> list[Result]:
        return self.predict(source, bboxes=bboxes, points=points, labels=labels, multimask_output=multimask_output,
                            progress=progress, **everything)

    def predict(
        self, source: ImageLike | Sequence[ImageLike], bboxes=None, points=None, labels=None,
        multimask_output: bool = False, progress: ProgressCallback | None = None, **everything: Any,
    ) -> list[Result]:
        """Segment each source. Without prompts every object is segmented (segment everything),
        with the generator options given here (Ultralytics' names such as crop_n_layers,
        points_stride, conf_thres, or MaskGenerator's) over those given to SAM(); then
        `progress(done, total)` is called as the grid's prompts are decoded and `last_stats`
        (GenerationStats) says how many candidates passed each threshold."""
        options = everything_options(everything)
        sources = list(source) if isinstance(source, (list, tuple)) else [source]
        results = []
        for item in sources:
            image = load_image(item)
            path = str(item) if isinstance(item, (str, os.PathLike)) else None
            if bboxes is None and points is None:
                results.append(self._everything(image, path, progress, **options))
            else:
                if options:
                    raise PromptError(f"{', '.join(everything)} only apply to segment everything (no prompts)")
                results.append(self._prompted(image, path, bboxes, points, labels, multimask_output))
        return results

    def _everything(self, image: np.ndarray, path: str | None, progress: ProgressCallback | None = None,
                    **options: Any) -> Result:
        options = {**self.generator_options, **options}
        if options.get("point_grids") is not None:
            options["points_per_side"] = None
        generator = MaskGenerator(self.model, predictor=self.predictor, **options)
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


# Ultralytics' segment-everything keywords (Predictor.generate) -> samkit.MaskGenerator's
ULTRALYTICS_EVERYTHING = {
    "crop_n_layers": "crop_n_layers",
    "crop_overlap_ratio": "crop_overlap_ratio",
    "crop_downscale_factor": "crop_n_points_downscale_factor",
    "point_grids": "point_grids",
    "points_stride": "points_per_side",  # points per side of the grid, despite its name
    "points_batch_size": "points_per_batch",
    "conf_thres": "pred_iou_thresh",
    "stability_score_thresh": "stability_score_thresh",
    "stability_score_offset": "stability_score_offset",
    "crop_nms_thresh": "crop_nms_thresh",
}
# Result holds binary masks, so output_mode is not one of them
GENERATOR_OPTIONS = (set(GeneratorOptions.names()) - {"output_mode"}) | {"point_grids"}


def everything_options(options: dict[str, Any]) -> dict[str, Any]:
    """Segment-everything keywords, Ultralytics' or MaskGenerator's, as MaskGenerator's."""
    out = {}
    for name, value in options.items():
        key = ULTRALYTICS_EVERYTHING.get(name, name)
        if key not in GENERATOR_OPTIONS:
            raise TypeError(f"unknown segment-everything option {name!r}; Ultralytics' names: "
                            f"{', '.join(ULTRALYTICS_EVERYTHING)}; samkit's: {', '.join(sorted(GENERATOR_OPTIONS))}")
        out[key] = value
    return out


def _as_array(value):
    """Prompts as NumPy: torch tensors (an Ultralytics detector's boxes.xyxy, even on a GPU) too."""
    if value is not None and hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def xywh_to_xyxy(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def nest_prompts(bboxes, points, labels) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Ultralytics' nesting rules -> (point sets (B, N, 2), labels (B, N), boxes (B, 4)).

    points (2,) is one object with one point; (N, 2) is N objects with one point each;
    (B, N, 2) is B objects with N points each. labels follow the same nesting (default all 1).
    A box (4,) is one object; (B, 4) are B objects; given with points, there is one point set per box.
    """
    bboxes, points, labels = _as_array(bboxes), _as_array(points), _as_array(labels)
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


# overrides SAMPredictor reads; the others Ultralytics' docs pass have no meaning here
_IGNORED_OVERRIDES = {"task", "mode", "save", "verbose", "batch", "retina_masks", "show", "imgsz"}


class SAMPredictor:
    """Ultralytics' `ultralytics.models.sam.Predictor` calls on samkit's models:

        predictor = SAMPredictor(overrides=dict(conf=0.25, task="segment", mode="predict", imgsz=1024,
                                                model="mobile_sam.pt"))
        predictor.set_image("image.jpg")              # or cv2.imread(...): arrays are BGR, as there
        results = predictor(bboxes=[439, 437, 524, 709])
        results = predictor(points=[900, 370], labels=[1])
        predictor.reset_image()
        results = predictor(source="image.jpg", crop_n_layers=1, points_stride=64)  # segment everything

    overrides: `model` (name or checkpoint path, default mobile_sam.pt), `conf` (keep masks whose
    predicted IoU is above it, default 0.25 as in Ultralytics), `device` (cpu, cuda, cuda:N, mps,
    or a GPU index), `half` (float16). `imgsz` is always 1024 for SAM; task, mode, save and the
    like are accepted and have no effect. Results are `Result` objects (masks.xy, boxes.xyxy, ...).
    """

    def __init__(self, cfg: Any = None, overrides: dict[str, Any] | None = None, _callbacks: Any = None) -> None:
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - _IGNORED_OVERRIDES - {"model", "conf", "device", "half"})
        if unknown:
            raise TypeError(f"SAMPredictor does not know the override(s) {', '.join(unknown)}; it reads model, "
                            f"conf, device and half ({', '.join(sorted(_IGNORED_OVERRIDES))} are accepted and unused)")
        imgsz = overrides.get("imgsz", 1024)
        if imgsz not in (1024, (1024, 1024), [1024, 1024]):
            warnings.warn(f"imgsz={imgsz} is ignored: SAM's image encoder takes 1024 x 1024", stacklevel=2)
        device = overrides.get("device")
        if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
            device = f"cuda:{device}"
        self.overrides = overrides
        self.conf = float(overrides.get("conf") if overrides.get("conf") is not None else 0.25)
        self.sam = SAM(overrides.get("model", "mobile_sam.pt"), device=device or None,
                       dtype="float16" if overrides.get("half") else None)
        self.model = self.sam.model
        self._image: np.ndarray | None = None
        self._path: str | None = None

    @staticmethod
    def _read(image: ImageLike) -> tuple[np.ndarray, str | None]:
        """An image as Ultralytics takes it (a path, or a BGR array from cv2) -> RGB, path."""
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] in (3, 4):
            return load_image(np.ascontiguousarray(image[..., 2::-1])), None  # BGR(A) -> RGB
        return load_image(image), str(image) if isinstance(image, (str, os.PathLike)) else None

    def set_image(self, image: ImageLike) -> None:
        """Encode `image` (a path, a BGR array as cv2.imread gives, or a PIL image) once for the
        prompts that follow."""
        self._image, self._path = self._read(image)
        self.sam.predictor.set_image(self._image)

    def reset_image(self) -> None:
        """Forget the image (its embedding stays in the predictor's cache)."""
        self._image, self._path = None, None
        self.sam.predictor.reset_image()

    @property
    def features(self) -> torch.Tensor | None:
        """The current image's embedding (1, 256, 64, 64), or None."""
        return self.sam.predictor.get_image_embedding() if self._image is not None else None

    def __call__(self, source: ImageLike | None = None, stream: bool = False, bboxes=None, points=None,
                 labels=None, masks=None, multimask_output: bool = False, **everything: Any):
        """Masks for the prompts on `source`, else on the image of set_image; without prompts,
        segment everything with Ultralytics' keywords (crop_n_layers, points_stride,
        points_batch_size, conf_thres, stability_score_thresh, ...). A list of one Result
        (a generator of it with stream=True); masks scoring at most `conf` are dropped."""
        if masks is not None:
            raise PromptError("mask prompts are not supported by SAMPredictor: use samkit.Predictor.predict("
                              "mask_input=...) with the low-res logits of an earlier call")
        if source is not None:
            image, path = self._read(source)
        elif self._image is not None:
            image, path = self._image, self._path
        else:
            raise PromptError("no image: call set_image(image) first or pass source=")
        result = self.sam.predict(image, bboxes=bboxes, points=points, labels=labels,
                                  multimask_output=multimask_output, **everything)[0]
        keep = result.scores > self.conf
        if not keep.all():
            result = Result(result.orig_img, np.asarray(result.masks)[keep], np.asarray(result.boxes)[keep],
                            result.scores[keep], prompts=result.prompts)
        result.path = path
        return iter([result]) if stream else [result]
