"""The fine-tuning benchmark runs end to end (its --quick sizes) and reports the same loss for
samkit's and the official training step (SAM 1 and SAM 2.1); timings are not asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_finetune_quick_run(tmp_path):
    table = tmp_path / "finetune.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_finetune.py"), "--quick",
                           "--markdown", str(table)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    text = table.read_text()
    steps = [line for line in text.splitlines() if line.startswith("| training step")]
    assert len(steps) == 2 and all(": same;" in line for line in steps), steps
    sam2_steps = [line for line in text.splitlines() if line.startswith("| SAM 2.1 tiny training step")]
    assert len(sam2_steps) == 2 and all(": same;" in line for line in sam2_steps), sam2_steps
    assert "| epoch: 2 Kampala chips" in text and "held-out box mIoU" in text
    assert text.count("| peak memory of a whole run") == 2 and "| memory growth" in text
