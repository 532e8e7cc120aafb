"""`samkit label-studio ...` on the command line: help, settings errors, the precompute client."""

from __future__ import annotations

import os
import subprocess

from ls_helpers import samkit_command


def run(*args, env=None):
    return subprocess.run([*samkit_command(), "label-studio", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_serve_help_lists_every_setting():
    out = run("serve", "--help")
    assert out.returncode == 0
    for var in ("SAMKIT_MODEL", "SAMKIT_CHECKPOINT", "SAMKIT_DEVICE", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY",
                "SAMKIT_LS_BASIC_AUTH_USER", "SAMKIT_LS_CACHE_DIR", "SAMKIT_LS_MAX_REQUEST_MB"):
        assert var in out.stdout, var


def test_bad_settings_are_one_line_errors():
    out = run("serve", "--port", "1", env={"SAMKIT_LS_BATCH": "sometimes"})
    assert out.returncode == 2 and out.stderr.strip() == (
        "samkit: error: SAMKIT_LS_BATCH must be auto, boxes or off, not 'sometimes'")
    out = run("serve", "--port", "1", "--basic-auth-user", "only-user")
    assert out.returncode == 2 and "SAMKIT_LS_BASIC_AUTH_PASS" in out.stderr


def test_precompute_says_when_the_backend_is_not_there():
    out = run("precompute", "--project", "1", "--backend", "http://127.0.0.1:9")
    assert out.returncode != 0 and "cannot reach the backend at http://127.0.0.1:9" in out.stderr
