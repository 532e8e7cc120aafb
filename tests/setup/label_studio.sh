#!/usr/bin/env bash
# Installs what tests/label_studio needs beside samkit's own venv (idempotent, safe to re-run):
#  - Label Studio 1.23.2 in its OWN virtualenv (.venvs/label-studio); it pins its own Django /
#    DRF stack, so it must never share a venv with samkit.
#  - Debian's Chromium for the headless browser test (Playwright drives it through
#    executable_path=/usr/bin/chromium; `playwright install` cannot download browsers here).
# docker/Dockerfile.label-studio runs the same pip command.
set -euo pipefail
cd "$(dirname "$0")/../.."
LS_VERSION=${SAMKIT_LS_VERSION:-1.23.2}
LS_VENV=${SAMKIT_LS_VENV:-.venvs/label-studio}
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ -x "$LS_VENV/bin/label-studio" ] && \
   [ "$("$LS_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null)" = "$LS_VERSION" ]; then
    echo "label-studio $LS_VERSION already in $LS_VENV"
else
    start=$(date +%s)
    "$PYTHON" -m venv "$LS_VENV"
    "$LS_VENV/bin/python" -m pip install -q --no-compile "label-studio==$LS_VERSION"
    echo "label-studio $LS_VERSION installed in $LS_VENV in $(( $(date +%s) - start )) s"
fi

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || true)"
else
    start=$(date +%s)
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
    echo "chromium installed in $(( $(date +%s) - start )) s"
fi
