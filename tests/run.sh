#!/usr/bin/env bash
# The one test command (README "Run the tests"; .ci/run calls exactly this).
# On a fresh machine it creates .venv, installs samkit with every extra, installs what the
# tests need beside it (tests/setup/*.sh: a Label Studio server in its own virtualenv,
# FiftyOne's MongoDB build, headless Chromium), then runs the whole suite. Services are
# started by the tests themselves (pytest fixtures) on 127.0.0.1 and stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch is pinned to the CPU wheel this machine carries; a GPU user installs the CUDA build
# of torch first instead (README, "Installing"). --no-compile: byte-compiling every installed
# file (transformers, FiftyOne, torch) is a large part of a fresh install; imports compile what
# they use.
python -m pip install -q --no-compile torch==2.13.0
python -m pip install -q --no-compile -e ".[all,dev]"
for step in tests/setup/*.sh; do
    echo "== setup: $step"
    bash "$step"
done
python -m pytest tests "$@"
