"""The click-under-load benchmark runs end to end (one server, one click per phase) and writes
its table with the CPU facts. Timings are not asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_label_studio_load_miniature_run(tmp_path, mobile_sam_checkpoint, images_dir):
    table = tmp_path / "load.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_label_studio_load.py"),
                           "--checkpoint", str(mobile_sam_checkpoint), "--image", str(images_dir / "dog.jpg"),
                           "--threads", "1", "--busy", "1", "--repeats", "1", "--markdown", str(table)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = table.read_text()
    # the CPU line (benchmarks/machine_info.py), then the load
    assert re.search(r"\d+ cores, flags .+, L3 .+; load average [0-9.]+ at start; load average [0-9.]+ at end",
                     text), text
    assert "avx2" in text, text  # a flag, or "no avx2/avx512"
    rows = [line for line in text.splitlines() if line.startswith("| 1 |")]
    assert [row.split(" | ")[1] for row in rows] == ["quiet", "1 busy-loop processes"], rows
    assert all(re.search(r"\| \d+ ms \| \d+-\d+ ms \|$", row) for row in rows), rows
    sizes = re.search(r"(\d+) / (\d+) KB with the shipped config \(brush\), (\d+) / (\d+) KB with PolygonLabels"
                      r" added", text)
    assert sizes, text
    wire, json_kb, wire_polygons, json_polygons = (int(v) for v in sizes.groups())
    assert wire < json_kb and json_kb < json_polygons, text  # gzip on the wire; polygons only when configured
