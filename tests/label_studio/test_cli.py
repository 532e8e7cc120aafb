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


def test_bad_numbers_in_the_environment():
    """A numeric variable that is not a number: one line naming it, only where it is read."""
    out = subprocess.run([*samkit_command(), "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SAMKIT_LS_PORT": "abc"})
    assert out.returncode == 0 and "label-studio" in out.stdout  # other commands are unaffected
    for var in ("SAMKIT_LS_PORT", "SAMKIT_LS_CACHE_SIZE", "SAMKIT_LS_MAX_REQUEST_MB"):
        out = run("serve", env={var: "abc"})
        assert out.returncode == 2, out.stderr
        kind = "an integer" if var != "SAMKIT_LS_MAX_REQUEST_MB" else "a number"
        assert out.stderr.strip() == f"samkit: error: {var} must be {kind}, got 'abc'"


def test_label_studio_url_and_cache_dir_are_checked_at_start(tmp_path):
    out = run("serve", "--port", "1", env={"LABEL_STUDIO_URL": "localhost:8080"})
    assert out.returncode == 2 and "LABEL_STUDIO_URL must start with http:// or https://" in out.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = run("serve", "--port", "1", "--cache-dir", str(blocker / "cache"))
    assert out.returncode == 2 and "SAMKIT_LS_CACHE_DIR" in out.stderr and "cannot be used" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_float16_on_a_cpu_is_refused_at_start():
    """float16 on a CPU made the first click take 43 s: refused at start, one line saying what to use."""
    import pytest

    from samkit import SamkitError
    from samkit.label_studio.settings import Settings

    with pytest.raises(SamkitError, match="bfloat16 or float32 on a CPU"):
        Settings.from_env(device="cpu", dtype="float16")
    for dtype in ("bfloat16", "float32"):
        assert Settings.from_env(device="cpu", dtype=dtype).dtype == dtype
    assert Settings.from_env(device="auto").device is None  # the documented default, spelled out
    out = run("serve", "--port", "1", "--device", "cpu", "--dtype", "fp16")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("samkit: error: SAMKIT_DTYPE=fp16 on a CPU") and "bfloat16" in out.stderr


def test_precompute_says_when_label_studio_is_not_there(serve_backend):
    """The backend runs but its LABEL_STUDIO_URL gets no answer: one line naming the URL and what
    to check, not requests' nested exception reprs."""
    from conftest import free_port

    ls_url = f"http://127.0.0.1:{free_port()}"  # a closed port
    backend_url, _ = serve_backend(label_studio_url=ls_url, label_studio_api_key="f" * 40)
    out = run("precompute", "--project", "3", "--backend", backend_url)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.splitlines() == [
        f"samkit: error: precompute failed: cannot reach Label Studio at {ls_url} (connection refused): "
        "check LABEL_STUDIO_URL (scheme, host and port as the backend's machine sees it) and that Label Studio "
        "is running"]
