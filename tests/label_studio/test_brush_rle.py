"""The brush RLE the backend sends is byte for byte what label_studio_sdk's own encoder makes, and
Label Studio's decoder reads it back to the mask."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from samkit.label_studio.regions import brush_rle


def _line(run: int) -> np.ndarray:
    """A 1-row mask with one run of `run` pixels between runs of background."""
    row = np.zeros(3 * run + 7, bool)
    row[5 : 5 + run] = True
    return row[None]


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cases = {
        "empty": np.zeros((5, 7), bool),
        "full": np.ones((5, 7), bool),
        "one pixel on": np.ones((1, 1), bool),
        "one pixel off": np.zeros((1, 1), bool),
        # 4 * pixels crosses 65536 (one 16-bit piece) at 16384 pixels
        "full 128x128": np.ones((128, 128), bool),
        "full 129x127": np.ones((129, 127), bool),
        "full 32769x2": np.ones((32769, 2), bool),
    }
    rect = np.zeros((300, 500), bool)
    rect[50:200, 100:450] = True
    cases["rectangle"] = rect
    yy, xx = np.mgrid[:240, :360]
    cases["ellipse"] = ((yy - 120) ** 2 / 60**2 + (xx - 180) ** 2 / 100**2) < 1
    for p in (0.01, 0.3, 0.5, 0.97):
        cases[f"random {p}"] = rng.random((37, 53)) < p
    # every run-length field width and its edges, after the 4x of RGBA: 4, 8 | 12, 16 | 20, 256 |
    # 260, 65536 | 65540, two pieces, three pieces
    for run in (1, 2, 3, 4, 5, 63, 64, 65, 16383, 16384, 16385, 32768, 32769, 40000):
        cases[f"run {run}"] = _line(run)
    return cases


@pytest.mark.parametrize("name", list(_cases()))
def test_brush_rle_is_the_sdk_encoding(name):
    mask = _cases()[name]
    got = brush_rle(mask)
    assert got == mask2rle(mask.astype(np.uint8) * np.uint8(255))
    assert all(isinstance(b, int) and 0 <= b <= 255 for b in got)
    decoded = np.asarray(decode_rle(got)).reshape(*mask.shape, 4)
    assert np.array_equal(decoded[..., 3] > 0, mask) and np.array_equal(decoded[..., 0] > 0, mask)


def test_brush_rle_of_a_non_contiguous_and_non_bool_mask():
    base = np.random.default_rng(1).random((40, 60)) < 0.5
    view = base[::2, ::3]  # strided
    assert brush_rle(view) == mask2rle(view.astype(np.uint8) * np.uint8(255))
    as_uint8 = base.astype(np.uint8) * 7  # any non-zero value is inside
    assert brush_rle(as_uint8) == brush_rle(base)


def test_label_studio_click_benchmark_runs(tmp_path, mobile_sam_checkpoint, images_dir):
    """benchmarks/bench_label_studio.py end to end (a miniature run); timings are not asserted,
    its checks are: the click's mask agrees with the official's (float32 rounding of the
    upscaling apart), both RLE encoders' bytes agree, and the backend's answer is the same mask."""
    table = tmp_path / "click.md"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_label_studio.py"
    done = subprocess.run(
        [sys.executable, str(script), "--checkpoint", str(mobile_sam_checkpoint),
         "--image", str(images_dir / "dog.jpg"), "--repeats", "1", "--markdown", str(table)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in table.read_text().splitlines() if line.startswith("| MobileSAM")]
    assert len(rows) == 4, rows
    differing, size = (int(v) for v in re.search(r"differing from the official's: (\d+) of (\d+)", rows[0]).groups())
    assert differing <= size * 1e-4, rows[0]
    assert all("RLE bytes equal: True" in r for r in rows[1:3]), rows
    assert "its brush RLE equals the click's above: True" in rows[3], rows[3]
