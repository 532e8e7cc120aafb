"""Start a local Label Studio with the samkit SAM backend connected, ready to click.

    python examples/label_studio_local.py --images examples/images
        starts Label Studio (from .venvs/label-studio, made by tests/setup/label_studio.sh, or the
        `label-studio` on PATH) on http://127.0.0.1:8080 and the backend on :9090, creates a project
        with examples/label_studio_config.xml, uploads the images, connects the backend as an
        interactive model and prints where to log in. Ctrl+C stops both.

    python examples/label_studio_local.py connect --url http://localhost:8080 --api-key TOKEN \
        --backend http://sam-backend:9090 --images ./my-images
        only the project part, for a Label Studio and backend already running (docker compose).

Options for the model go to the backend as environment variables (SAMKIT_MODEL, SAMKIT_CHECKPOINT,
SAMKIT_DEVICE, ...; see `samkit label-studio serve --help`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG = HERE / "label_studio_config.xml"
IMAGE_TYPES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def wait_for(url: str, timeout: float, headers: dict | None = None, proc: subprocess.Popen | None = None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{' '.join(map(str, proc.args[:3]))} exited with {proc.returncode}")
        try:
            if requests.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def connect(url: str, api_key: str, backend: str, images: list[Path], title: str = "SAM pre-labelling",
            config: str | None = None) -> dict:
    """Create a project with the SAM config, upload images, connect the backend (interactive)."""
    s = requests.Session()
    s.headers["Authorization"] = f"Token {api_key}"
    url = url.rstrip("/")
    r = s.post(f"{url}/api/projects/", json={"title": title, "label_config": config or CONFIG.read_text(),
                                              # open tasks fast: no batch prediction on opening a task
                                              "show_collab_predictions": False}, timeout=60)
    r.raise_for_status()
    project = r.json()["id"]
    for path in images:
        with open(path, "rb") as f:
            s.post(f"{url}/api/projects/{project}/import", files={"file": (path.name, f)},
                   timeout=120).raise_for_status()
    r = s.post(f"{url}/api/ml", json={"url": backend, "project": project, "title": "samkit SAM",
                                      "is_interactive": True}, timeout=120)
    if r.status_code >= 300:
        raise SystemExit(f"Label Studio could not connect the backend at {backend}: {r.text[:500]}")
    tasks = s.get(f"{url}/api/tasks/", params={"project": project}, timeout=60).json().get("tasks", [])
    first = tasks[0]["id"] if tasks else None
    return {"project": project, "ml_backend": r.json()["id"], "tasks": len(tasks),
            "label_url": f"{url}/projects/{project}/data" + (f"?task={first}" if first else "")}


def find_images(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_TYPES)


def label_studio_exe() -> str:
    local = REPO / ".venvs" / "label-studio" / "bin" / "label-studio"
    if local.exists():
        return str(local)
    found = shutil.which("label-studio")
    if not found:
        raise SystemExit("Label Studio is not installed: run tests/setup/label_studio.sh (own virtualenv) "
                         "or pip install label-studio==1.23.2 in another environment")
    return found


def backend_command() -> list[str]:
    exe = shutil.which("samkit")
    return [exe, "label-studio", "serve"] if exe else [sys.executable, "-m", "samkit.label_studio", "serve"]


def run_local(args) -> int:
    token = args.api_key or secrets.token_hex(20)
    password = args.password or secrets.token_urlsafe(12)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="label-studio-"))
    ls_url, backend_url = f"http://127.0.0.1:{args.port}", f"http://127.0.0.1:{args.backend_port}"
    ls_env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # Label Studio refuses to call a backend on 127.0.0.1 unless both are off.
    ls_env.update(ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false", LABEL_STUDIO_BASE_DATA_DIR=str(data_dir))
    procs = []
    try:
        print(f"starting Label Studio on {ls_url} (data in {data_dir}; the first start takes a minute or two)")
        procs.append(subprocess.Popen(
            [label_studio_exe(), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(args.port),
             "--data-dir", str(data_dir), "--username", args.username, "--password", password,
             "--user-token", token, "--enable-legacy-api-token"],
            env=ls_env, stdout=subprocess.DEVNULL if not args.verbose else None, stderr=subprocess.STDOUT,
            start_new_session=True))
        print(f"starting the SAM backend on {backend_url}")
        procs.append(subprocess.Popen([*backend_command(), "--host", "127.0.0.1", "--port", str(args.backend_port)],
                                      start_new_session=True))
        wait_for(f"{backend_url}/health", 300, proc=procs[1])
        wait_for(f"{ls_url}/api/current-user/whoami", 600, {"Authorization": f"Token {token}"}, proc=procs[0])
        info = connect(ls_url, token, backend_url, find_images(args.images), args.title)
        print(f"\nready: {info['tasks']} task(s) in project {info['project']}\n"
              f"  open   {info['label_url']}\n  login  {args.username} / {password}\n  token  {token}\n"
              "In the editor: switch Auto-Annotation on, pick the smart keypoint (or rectangle) tool from the "
              "toolbar's magic-wand group, choose a label, click the object; Alt+click adds a negative point.\n"
              "Ctrl+C stops Label Studio and the backend.")
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    con = sub.add_parser("connect", help="create a project and connect a running backend to a running Label Studio")
    con.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", "http://127.0.0.1:8080"))
    con.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                     required=not os.environ.get("LABEL_STUDIO_API_KEY"))
    con.add_argument("--backend", default="http://127.0.0.1:9090", help="the backend's URL as Label Studio reaches it")
    con.add_argument("--images", type=Path, help="a folder of images to upload")
    con.add_argument("--title", default="SAM pre-labelling")
    for p in (parser,):
        p.add_argument("--images", type=Path, default=HERE / "images", help="a folder of images to upload")
        p.add_argument("--port", type=int, default=8080)
        p.add_argument("--backend-port", type=int, default=9090)
        p.add_argument("--username", default="admin@example.com")
        p.add_argument("--password")
        p.add_argument("--api-key", help="the legacy token to create (40 hex characters; random by default)")
        p.add_argument("--data-dir", help="Label Studio's data folder (a new temporary one by default)")
        p.add_argument("--title", default="SAM pre-labelling")
        p.add_argument("--verbose", action="store_true", help="show Label Studio's log")
    args = parser.parse_args(argv)
    if args.command == "connect":
        info = connect(args.url, args.api_key, args.backend, find_images(args.images), args.title)
        print(f"project {info['project']}: {info['tasks']} task(s), backend connected; open {info['label_url']}")
        return 0
    return run_local(args)


if __name__ == "__main__":
    sys.exit(main())
