"""The example config and script work, and docker/ installs and starts things the way the tests do
(no Docker engine here, so the files are checked against the commands the tests run)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from ls_helpers import samkit_command

from samkit.label_studio.label_config import parse_label_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def test_example_config_is_the_packaged_one_and_has_every_tool():
    example = (REPO / "examples" / "label_studio_config.xml").read_text()
    assert example == (REPO / "plugins" / "label_studio" / "label_config.xml").read_text()
    config = parse_label_config(example)
    # brush masks only (one small answer per click); PolygonLabels is there, commented out, to add
    assert {c.tag for c in config.outputs("image")} == {"BrushLabels"} and "<PolygonLabels" in example
    assert {c.tag for c in config.prompts("image")} == {"KeyPointLabels", "RectangleLabels"}
    assert all(c.smart for c in config.prompts("image"))
    for cmd in ([*samkit_command(), "label-studio", "config"], [sys.executable, "-m", "samkit.label_studio", "config"]):
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout == example, out.stderr


def test_example_script_connects_a_project(label_studio, backend_server, images_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bus.jpg").write_bytes((images_dir / "bus.jpg").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = subprocess.run([sys.executable, str(REPO / "examples" / "label_studio_local.py"), "connect",
                          "--url", label_studio.url, "--api-key", label_studio.token,
                          "--backend", backend_server.url, "--images", str(folder), "--title", "example script"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    project = int(re.search(r"project (\d+): 1 task\(s\), backend connected", out.stdout).group(1))
    ml = label_studio.ok("GET", "/api/ml", params={"project": project})
    assert len(ml) == 1 and ml[0]["is_interactive"] and ml[0]["state"] == "CO"
    assert label_studio.ok("GET", f"/api/projects/{project}")["label_config"].strip().startswith("<View>")


def _dockerfile_cmd(path: Path) -> list[str]:
    line = [ln for ln in path.read_text().splitlines() if ln.startswith("CMD ")][-1]
    return json.loads(line[4:])


def test_backend_images_start_the_tested_command():
    from samkit.label_studio import cli

    for name in ("Dockerfile", "Dockerfile.cuda"):
        cmd = _dockerfile_cmd(DOCKER / name)
        assert cmd[:3] == ["samkit", "label-studio", "serve"], name
        parser = argparse.ArgumentParser()
        cli.add_commands(parser.add_subparsers())
        args = parser.parse_args(cmd[1:])
        assert (args.host, args.port, args.func) == ("0.0.0.0", 9090, cli._serve)
        text = (DOCKER / name).read_text()
        assert 'pip install ".[label-studio]"' in text


def test_label_studio_image_matches_the_test_setup():
    setup = (REPO / "tests" / "setup" / "label_studio.sh").read_text()
    version = re.search(r"LS_VERSION=\$\{SAMKIT_LS_VERSION:-([0-9.]+)\}", setup).group(1)
    assert version == "1.23.2"
    # the test setup skips byte-compiling (a CI speed-up); the package and version are the image's
    assert 'pip install -q --no-compile "label-studio==$LS_VERSION"' in setup
    ls_docker = (DOCKER / "label-studio.Dockerfile").read_text()
    assert f'pip install "label-studio=={version}"' in ls_docker
    start = shlex.split(_dockerfile_cmd(DOCKER / "label-studio.Dockerfile")[-1].replace("exec ", ""))
    conftest = (REPO / "tests" / "label_studio" / "conftest.py").read_text()
    for flag in ("start", "--no-browser", "--internal-host", "-p", "--data-dir", "--username", "--password",
                 "--user-token", "--enable-legacy-api-token"):
        assert flag in start and f'"{flag}"' in conftest, flag
    for setting in ("ML_BLOCK_LOCAL_IP", "SSRF_PROTECTION_ENABLED"):
        assert f"{setting}=false" in ls_docker and f'"{setting}": "false"' in conftest


def test_compose_wires_label_studio_and_the_backend():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    ls, backend = compose["services"]["label-studio"], compose["services"]["sam-backend"]
    assert ls["environment"]["ML_BLOCK_LOCAL_IP"] == "false"
    assert ls["environment"]["SSRF_PROTECTION_ENABLED"] == "false"
    assert backend["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    text = (DOCKER / "docker-compose.yml").read_text()
    assert "ML_BLOCK_LOCAL_IP=false" in text and "SSRF_PROTECTION_ENABLED=false" in text  # documented
    settings_doc = (REPO / "plugins" / "label_studio" / "settings.py").read_text()
    for var in backend["environment"]:
        assert var in settings_doc, f"{var} is set in docker-compose.yml but the backend does not read it"
