"""Checks shared by the FiftyOne tests, and how they start the App server and Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import samkit


REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGINS_DIR = REPO_ROOT / "plugins"

# Hand-drawn boxes (relative [x, y, w, h]) around real objects in the shared photos.
BOXES = {
    "truck.jpg": [("truck", [0.04, 0.22, 0.92, 0.50])],
    "dog.jpg": [("dog", [0.08, 0.10, 0.55, 0.85])],
    "dogs.jpg": [("dog", [0.03, 0.05, 0.45, 0.93]), ("dog", [0.50, 0.10, 0.47, 0.88])],
    "groceries.jpg": [("bag", [0.30, 0.15, 0.40, 0.80])],
    "picture1.jpg": [("object", [0.20, 0.20, 0.60, 0.60])],
    "picture2.jpg": [("object", [0.10, 0.30, 0.50, 0.50])],
    "bus.jpg": [("bus", [0.00, 0.20, 1.00, 0.55]), ("person", [0.05, 0.40, 0.25, 0.50])],
}


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # tests/setup/fiftyone.sh installs it


@contextmanager
def environ(**values: str):
    """os.environ with `values` set, restored afterwards (what the App server process inherits)."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def launch_app(port: int, dataset=None, **environment: str):
    """fo.launch_app on 127.0.0.1:port (the App server in its own process, which inherits
    `environment`), showing `dataset` if given; returns the session once the server answers
    (within 180 s)."""
    import fiftyone as fo
    import httpx

    with environ(**environment):
        session = fo.launch_app(dataset, remote=True, address="127.0.0.1", port=port, auto=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return session
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            session.close()
            raise AssertionError("the FiftyOne App did not start")
        time.sleep(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def image_size(path: str) -> tuple[int, int]:
    """(width, height) as samkit sees the image (EXIF orientation applied)."""
    height, width = samkit.load_image(path).shape[:2]
    return width, height


def box_pixels(box, width: int, height: int) -> tuple[int, int, int, int]:
    x, y, w, h = box
    x0, y0 = int(round(x * width)), int(round(y * height))
    return x0, y0, int(round((x + w) * width)), int(round((y + h) * height))


def check_box_relative_mask(det, width: int, height: int) -> np.ndarray:
    """The detection's mask covers exactly its box; returns the mask pasted into the full image."""
    mask = det.get_mask()
    assert mask is not None, f"detection {det.id} has no mask"
    x, y, w, h = det.bounding_box
    assert 0.0 <= x < 1.0 and 0.0 <= y < 1.0 and w > 0 and h > 0
    assert x + w <= 1.0 + 1e-9 and y + h <= 1.0 + 1e-9
    x0, y0, x1, y1 = box_pixels(det.bounding_box, width, height)
    assert mask.shape[:2] == (y1 - y0, x1 - x0), (mask.shape, (y1 - y0, x1 - x0))
    full = np.zeros((height, width), dtype=bool)
    full[y0:y1, x0:x1] = mask.astype(bool)
    return full


def check_tight(det, width: int, height: int) -> np.ndarray:
    """A mask made from a full-image mask touches all four sides of its box."""
    full = check_box_relative_mask(det, width, height)
    mask = det.get_mask().astype(bool)
    assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
    return full


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
