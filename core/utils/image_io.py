"""Reading images into the HxWx3 uint8 RGB arrays every samkit model takes.

Conversion rules (applied to files, PIL images and arrays alike):
- grayscale (HxW or HxWx1) is repeated into three channels;
- an alpha channel (RGBA, LA) is dropped: colour values are kept as they are;
- palette and other PIL modes are converted to RGB by Pillow;
- 16-bit integers are scaled linearly from 0..65535 to 0..255 (value / 257, rounded);
- floats in [0, 1] are scaled by 255; floats in [0, 255] are rounded; other ranges are refused
  (stretch them yourself: samkit cannot know which range matters);
- booleans become 0 / 255;
- files are turned upright by their EXIF orientation, as browsers and image viewers show them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image]


def load_image(image: ImageLike) -> np.ndarray:
    """A path, PIL image or array -> HxWx3 uint8 RGB array (see the module docstring for the rules)."""
    if isinstance(image, (str, os.PathLike)):
        return _array_to_rgb(_pil_to_array(_open(Path(image))), source=str(image))
    if isinstance(image, Image.Image):
        return _array_to_rgb(_pil_to_array(image), source="PIL image")
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, source="array")
    raise ImageError(
        f"unsupported image type {type(image).__name__}: pass a file path, a PIL image or an HxWx3 uint8 array"
    )


def too_large_message(exc: Exception) -> str:
    """What to tell a user whose image Pillow refused as a possible decompression bomb."""
    return (f"{exc} Pillow refuses images this large as a safety guard; if you trust the file, raise "
            "PIL.Image.MAX_IMAGE_PIXELS (None: no limit) in the process that loads it, or downscale the image "
            "(SAM sees it at 1024 px on the long side anyway)")


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image file")
    try:
        with Image.open(path) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image Pillow can read (is it a JPEG/PNG/TIFF/WebP file?)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: {too_large_message(exc)}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path} is corrupt or truncated: {exc}") from None


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGB", "L", "I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image)
        if image.mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
            array = array.astype(np.uint16)
        return array
    if image.mode in ("RGBA", "LA", "PA"):
        return np.asarray(image.convert("RGBA"))[..., :3] if image.mode != "LA" else np.asarray(image)[..., 0]
    return np.asarray(image.convert("RGB"))


def _array_to_rgb(array: np.ndarray, source: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageError(f"{source}: expected an HxW, HxWx3 or HxWx4 image, got shape {array.shape}")
    if array.shape[2] == 4:
        array = array[..., :3]
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{source}: the image is empty (shape {array.shape})")
    return np.ascontiguousarray(_to_uint8(array, source))


def _to_uint8(array: np.ndarray, source: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ImageError(
                f"{source}: integer values {low}..{high} do not fit 8 or 16 bits; scale the image to uint8 first"
            )
        if array.dtype.itemsize == 1 or high <= 255 and array.dtype != np.uint16:
            return array.astype(np.uint8)
        return np.round(array.astype(np.float32) / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{source}: the image holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:
            return np.round(array * 255.0).astype(np.uint8)
        if low >= 0.0 and high <= 255.0:
            return np.round(array).astype(np.uint8)
        raise ImageError(
            f"{source}: float values {low:g}..{high:g} are neither in [0, 1] nor [0, 255]; "
            "stretch the image to uint8 first"
        )
    raise ImageError(f"{source}: unsupported pixel type {array.dtype}")
