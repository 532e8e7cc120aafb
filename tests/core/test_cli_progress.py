"""`samkit everything` shows a progress bar in a terminal (not with -q, not in a log), and says why
and how to lower the thresholds when no mask passes them."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest

from samkit.cli import main


def run_with_terminal_stderr(argv: list[str], timeout: float = 300) -> tuple[int, str, str]:
    """Run `samkit ARGV` with stderr on a pseudo-terminal (as in a shell); (exit code, stdout, stderr)."""
    master, slave = pty.openpty()
    # a new pseudo-terminal is 0 columns wide, and tqdm draws nothing into 0 columns
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "samkit", *argv], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            pytest.fail(f"samkit {' '.join(argv)} gave no output for {timeout} s")
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read().decode()
    os.close(master)
    return proc.wait(timeout=60), out, err.decode(errors="replace")


def everything_args(image, checkpoint, out, *extra: str) -> list[str]:
    return ["everything", str(image), "--points-per-side", "4", "--points-per-batch", "4",
            "--model", str(checkpoint), "--device", "cpu", "-o", str(out), *extra]


def test_a_terminal_gets_a_progress_bar_over_the_grid(mobile_sam_checkpoint, images_dir, tmp_path):
    rc, out, err = run_with_terminal_stderr(everything_args(images_dir / "dog.jpg", mobile_sam_checkpoint,
                                                            tmp_path / "out", "--pred-iou-thresh", "0"))
    assert rc == 0, err
    # tqdm redraws one line (\r) as the 16 grid points are decoded 4 at a time
    assert "\rsegment everything:" in err and "0/16" in err and "16/16" in err, err
    assert "masks in" in out


def test_quiet_and_non_terminal_runs_draw_no_bar(mobile_sam_checkpoint, images_dir, tmp_path):
    rc, _, err = run_with_terminal_stderr(everything_args(images_dir / "dog.jpg", mobile_sam_checkpoint,
                                                          tmp_path / "q", "-q", "--pred-iou-thresh", "0"))
    assert rc == 0 and "/16" not in err, err
    proc = subprocess.run([sys.executable, "-m", "samkit",
                           *everything_args(images_dir / "dog.jpg", mobile_sam_checkpoint, tmp_path / "log",
                                            "--pred-iou-thresh", "0")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "/16" not in proc.stderr and "\r" not in proc.stderr, proc.stderr


def test_no_mask_passing_the_thresholds_is_explained(mobile_sam_checkpoint, images_dir, tmp_path, capsys):
    # the seeded random weights predict IoUs far below the default 0.88
    assert main(everything_args(images_dir / "dog.jpg", mobile_sam_checkpoint, tmp_path / "out")) == 0
    captured = capsys.readouterr()
    assert "0 masks" in captured.out
    err = captured.err.strip()
    assert err.startswith("samkit: warning: no masks found: none of the 48 candidate masks") and "\n" not in err
    assert "--pred-iou-thresh 0.88" in err and "Lower the thresholds" in err
    assert json.loads((tmp_path / "out" / "masks.json").read_text())["annotations"] == []


def test_a_run_that_finds_masks_gives_no_hint(mobile_sam_checkpoint, images_dir, tmp_path, capsys):
    assert main(everything_args(images_dir / "dog.jpg", mobile_sam_checkpoint, tmp_path / "out",
                                "--pred-iou-thresh", "0", "--stability-score-thresh", "0")) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and " 0 masks" not in captured.out
