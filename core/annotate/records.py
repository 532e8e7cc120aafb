"""The typed records auto-annotation passes around: a detector's boxes, one object's mask, one
image's result, the shape options and the run's summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import SamkitError


class AnnotateError(SamkitError, ValueError):
    """Bad input for auto-annotation (data, detector, classes, output): the message says what and how to fix it."""


@dataclass(frozen=True)
class Detections:
    """What a detector found in one image.

    boxes (N, 4) float64 XYXY in pixels of the image as samkit reads it (EXIF orientation
    applied); scores (N,) float64 confidences in [0, 1] (1.0 for boxes read from label files);
    class_ids (N,) int64, the detector's own ids; names: class id -> name for the ids the
    detector knows (may be empty).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    names: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        class_ids = np.asarray(self.class_ids).reshape(-1)
        if not (len(boxes) == len(scores) == len(class_ids)):
            raise AnnotateError(
                f"a detector returned {len(boxes)} boxes, {len(scores)} scores and {len(class_ids)} class ids: "
                "give one score and one class per box"
            )
        if class_ids.size and not np.all(np.equal(np.mod(class_ids.astype(np.float64), 1), 0)):
            raise AnnotateError(f"class ids must be whole numbers, got {class_ids[:5].tolist()}")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids.astype(np.int64))
        object.__setattr__(self, "names", {int(k): str(v) for k, v in dict(self.names or {}).items()})

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, names: Mapping[int, str] | None = None) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), names or {})

    def select(self, keep: np.ndarray) -> "Detections":
        """The detections at `keep` (a boolean mask or indices), in that order."""
        return Detections(self.boxes[keep], self.scores[keep], self.class_ids[keep], self.names)

    def name_of(self, class_id: int) -> str:
        return self.names.get(int(class_id), str(int(class_id)))


@dataclass(frozen=True)
class ShapeOptions:
    """How masks become shapes.

    holes: keep holes in polygons (drawn as zero-width "keyhole" cuts in one ring); False keeps
    only outer outlines, as Ultralytics does. pieces: what a mask in several pieces becomes:
    "merge" (one object; where a format holds one ring per object, the pieces are joined by
    zero-width bridges, as Ultralytics does), "largest" (only the largest piece is kept) or
    "split" (every piece becomes an object of its own, same class and scores). min_area: pieces
    of fewer pixels are dropped and holes of fewer pixels filled, before anything else.
    non_overlapping: each pixel belongs to at most one object (the one with the higher detector
    score; ties: the earlier box). tolerance: polygon simplification in pixels (Douglas-Peucker;
    0 keeps every contour vertex). mask_format: "polygons" or "rle" (COCO RLE, or Label Studio's
    brush RLE) where a format offers both.
    """

    holes: bool = True
    pieces: str = "merge"
    min_area: int = 0
    non_overlapping: bool = False
    tolerance: float = 1.0
    mask_format: str = "polygons"

    def __post_init__(self) -> None:
        if self.pieces not in PIECES:
            raise AnnotateError(f"pieces must be one of {', '.join(PIECES)}, got {self.pieces!r}")
        if self.mask_format not in ("polygons", "rle"):
            raise AnnotateError(f"mask_format must be 'polygons' or 'rle', got {self.mask_format!r}")
        if int(self.min_area) < 0 or float(self.tolerance) < 0:
            raise AnnotateError(f"min_area and tolerance must be >= 0, got {self.min_area} and {self.tolerance}")


PIECES = ("merge", "largest", "split")


@dataclass
class ObjectMask:
    """One object SAM segmented: its class, the detector's score and SAM's predicted IoU, the
    prompt box (XYXY pixels), and its mask cropped to its tight box, whose top-left pixel is
    `origin` (x, y) in the image."""

    class_id: int
    score: float
    sam_score: float
    box: tuple[float, float, float, float]
    crop: np.ndarray
    origin: tuple[int, int]

    @property
    def bbox(self) -> list[int]:
        """[x, y, w, h] of the tight box in pixels (w, h: the crop's size)."""
        return [self.origin[0], self.origin[1], self.crop.shape[1], self.crop.shape[0]]

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    def full(self, height: int, width: int) -> np.ndarray:
        """The mask at image size (H, W) bool."""
        out = np.zeros((height, width), dtype=bool)
        x, y = self.origin
        out[y:y + self.crop.shape[0], x:x + self.crop.shape[1]] = self.crop
        return out


@dataclass(frozen=True)
class ImageInfo:
    """One input image: its path, its key (the file name relative to the data folder, with '/'),
    and its size once read (0 before)."""

    path: Path
    key: str
    width: int = 0
    height: int = 0

    @property
    def stem(self) -> str:
        return Path(self.key).stem


@dataclass
class ImageResult:
    """What one image gave: its info (with its size), the format's encoded payload, counts, the
    class names its detections carried, or the one-line reason it was skipped (then no payload)."""

    image: ImageInfo
    payload: Any = None
    boxes: int = 0
    objects: int = 0
    empty_masks: int = 0
    names: dict[int, str] = field(default_factory=dict)
    error: str | None = None


@dataclass
class AnnotateSummary:
    """A finished (or interrupted) run: counts, where the outputs are, and the images that failed
    (key, reason)."""

    output_dir: Path
    format: str
    images: int = 0
    done: int = 0
    skipped_existing: int = 0
    empty_images: int = 0
    boxes: int = 0
    objects: int = 0
    empty_masks: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False
    where: str = ""

    def line(self) -> str:
        """One line for a person."""
        parts = [f"{self.done} images annotated", f"{self.objects} objects"]
        if self.empty_images:
            parts.append(f"{self.empty_images} without detections (empty label files)")
        if self.skipped_existing:
            parts.append(f"{self.skipped_existing} already done (skipped)")
        if self.empty_masks:
            parts.append(f"{self.empty_masks} boxes gave an empty mask")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        where = self.where or ", ".join(str(p) for p in self.outputs) or str(self.output_dir)
        return f"{', '.join(parts)} -> {where}"
