#!/usr/bin/env bash
# The official SAM 2 package, the oracle of the SAM 2 / 2.1 parity tests (tests/core/sam2_oracle.py),
# installed into the project venv (idempotent; tests/run.sh runs it inside that venv).
#  - `sam2==1.1.0` on PyPI is a source distribution whose files for the image path are those of
#    facebookresearch/sam2. It requires torchvision, which has no build for this torch: it is
#    installed with --no-deps (its real dependencies hydra-core, omegaconf, antlr4-python3-runtime
#    and iopath are in the dev extra; the tests stand in for the five torchvision names it uses) and
#    --no-build-isolation (its setup.py imports torch). SAM2_BUILD_CUDA=0 skips its optional CUDA
#    extension (the hole-filling kernel, unused by the tests).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/}python"  # the project venv (tests/run.sh activates it)
SAM2_VERSION=1.1.0

installed=$("$PY" -c 'import importlib.metadata as m; print(m.version("sam2"))' 2>/dev/null || true)
if [ "$installed" = "$SAM2_VERSION" ]; then
    echo "sam2 $SAM2_VERSION already installed"
else
    echo "sam2 setup: installing sam2==$SAM2_VERSION (--no-deps --no-build-isolation)"
    SAM2_BUILD_CUDA=0 "$PY" -m pip install -q --no-deps --no-build-isolation "sam2==$SAM2_VERSION"
fi
"$PY" -c 'import importlib.util as u; assert u.find_spec("sam2.modeling.backbones.hieradet"), "sam2 not importable"'
