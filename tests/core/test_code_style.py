"""The code base passes ruff with the project's settings ([tool.ruff] in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKED = ["core", "plugins", "tests", "benchmarks", "examples"]


def test_ruff_check_is_clean():
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
         "--config", str(REPO_ROOT / "pyproject.toml"), *CHECKED],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, (
        f"ruff check {' '.join(CHECKED)} exited {done.returncode} (ruff is in the dev extra):\n"
        f"{done.stdout}{done.stderr}"
    )
