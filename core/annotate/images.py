"""Which images a run covers: a folder's image files (not its subfolders, as Ultralytics reads a
folder) or one image file, in name order."""

from __future__ import annotations

import os
from pathlib import Path

from .records import AnnotateError, ImageInfo

# Ultralytics' image suffixes (ultralytics.data.utils.IMG_FORMATS) that Pillow reads.
IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"})


def list_images(data: str | os.PathLike) -> tuple[Path, list[ImageInfo]]:
    """(the folder keys are relative to, the images in name order). Raises AnnotateError for a
    missing path, a folder without images, or two images whose label files would clash (same
    stem, e.g. a.jpg and a.png)."""
    path = Path(data).expanduser()
    if not path.exists():
        raise AnnotateError(f"data not found: {path} (give a folder of images or one image file)")
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise AnnotateError(f"{path} is not an image file (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
        return path.parent, [ImageInfo(path.resolve(), path.name)]
    with os.scandir(path) as entries:  # a generator: 100,000 names cost a few MB, not a stat each
        names = sorted(e.name for e in entries
                       if Path(e.name).suffix.lower() in IMAGE_SUFFIXES and not e.name.startswith(".") and e.is_file())
    if not names:
        raise AnnotateError(f"no image files in {path} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}; "
                            "subfolders are not searched)")
    seen: dict[str, str] = {}
    for name in names:
        stem = Path(name).stem
        if stem in seen:
            raise AnnotateError(f"{seen[stem]} and {name} in {path} have the same stem: their label files "
                                f"({stem}.txt) would clash; rename one")
        seen[stem] = name
    root = path.resolve()
    return root, [ImageInfo(root / name, name) for name in names]


def default_output_dir(data: str | os.PathLike) -> Path:
    """Ultralytics' default: `<data parent>/<data stem>_auto_annotate_labels`."""
    path = Path(data).expanduser().resolve()
    return path.parent / f"{path.stem}_auto_annotate_labels"
