"""Fixtures for the Label Studio backend tests.

- `sam_model`: the seeded MobileSAM checkpoint, loaded once (CPU).
- `make_client`: an in-process backend app (FastAPI TestClient) over `sam_model` with settings.
- `image_server`: a local HTTP server with real photos behind various auth/redirect behaviours.
- `label_studio`: a real Label Studio 1.23.2 (own virtualenv, tests/setup/label_studio.sh) started
  on 127.0.0.1 with a temp data dir for the session, stopped at the end.
- `backend_server`: the backend as users start it (`... label-studio serve`) in a subprocess.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from ls_helpers import CONFIG_ALL, samkit_command

REPO_ROOT = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("SAMKIT_LS_VENV", REPO_ROOT / ".venvs" / "label-studio"))
LS_TOKEN = "5a3c1f0e9b8d7c6a5f4e3d2c1b0a99887766554a"
LS_USER, LS_PASSWORD = "annotator@example.com", "samkit-test-pass"
LS_START_TIMEOUT = float(os.environ.get("SAMKIT_LS_START_TIMEOUT", 420))

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None,
              headers: dict | None = None) -> float:
    """Poll until url answers 200; seconds waited. Fails with the log tail if proc dies."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            pytest.fail(f"process exited with {proc.returncode} before {url} answered:\n{tail}")
        try:
            if requests.get(url, headers=headers, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log else ""
    pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{tail}")


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process started with start_new_session=True and its children (its own group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# -- model and in-process apps ----------------------------------------------------------------
@pytest.fixture(scope="session")
def sam_model(mobile_sam_checkpoint):
    import samkit

    return samkit.load_model(mobile_sam_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def ref(sam_model, images_dir):
    """ref(name, points=None, labels=None, box=None, multimask=False, batch=False) -> (best mask,
    its score), straight from samkit.Predictor: what the backend's answer must decode to. A
    click's (interactive) reference decodes at the backend's default click precision
    (SAMKIT_LS_CLICK_DTYPE), a batch pre-labelling's (batch=True) in float32, as the backend does."""
    import numpy as np

    import samkit
    from samkit.label_studio.settings import Settings

    click = samkit.Predictor(sam_model, cache_size=8, decoder_dtype=Settings().click_dtype)
    batch_predictor = samkit.Predictor(sam_model, cache_size=8)

    def run(name, points=None, labels=None, box=None, multimask=False, batch=False):
        pred = batch_predictor if batch else click
        pred.set_image(images_dir / name)
        masks, scores, _ = pred.predict(point_coords=points, point_labels=labels, box=box, multimask_output=multimask)
        best = int(np.argmax(scores))
        return masks[best], float(scores[best])

    return run


@pytest.fixture(scope="session")
def payloads(shared_dir) -> dict:
    d = shared_dir / "notes" / "label-studio-1.23.2-payloads"
    return {p.stem: json.loads(p.read_text()) for p in d.glob("*.json")}


@pytest.fixture(scope="session")
def shared_cache():
    """One embedding cache for in-process apps that do not count encoder runs."""
    import samkit

    return samkit.EmbeddingCache(16)


@pytest.fixture
def make_client(sam_model, shared_cache):
    """make_client(fresh_cache=False, **settings) -> (TestClient, SamBackend) over the shared model.
    With fresh_cache=True the app gets its own embedding cache (for counting encoder runs)."""
    from fastapi.testclient import TestClient

    from samkit.label_studio.app import create_app
    from samkit.label_studio.backend import SamBackend
    from samkit.label_studio.settings import Settings

    clients = []

    def make(fresh_cache: bool = False, **overrides):
        defaults = dict(checkpoint="mobile_sam_random.pt", device="cpu", points_per_side=4, pred_iou_thresh=0.0,
                        stability_score_thresh=0.0, max_regions=5)
        defaults.update(overrides)
        settings = Settings.from_env(**defaults)
        backend = SamBackend(settings, model=sam_model, cache=None if fresh_cache else shared_cache)
        client = TestClient(create_app(settings, backend=backend, load=False), raise_server_exceptions=False)
        clients.append(client)
        return client, backend

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def serve_backend(sam_model):
    """serve_backend(**settings) -> (url, SamBackend): the backend over the shared model as a real
    HTTP server (uvicorn in a thread of this process), for clients that need a URL (the CLI)."""
    import uvicorn

    from samkit.label_studio.app import create_app
    from samkit.label_studio.backend import SamBackend
    from samkit.label_studio.settings import Settings

    servers = []

    def serve(**overrides):
        defaults = dict(checkpoint="mobile_sam_random.pt", device="cpu", points_per_side=4, pred_iou_thresh=0.0,
                        stability_score_thresh=0.0, max_regions=3)
        settings = Settings.from_env(**{**defaults, **overrides})
        backend = SamBackend(settings, model=sam_model)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings, backend=backend, load=False), host="127.0.0.1",
                                               port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", 30)
        return url, backend

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("SAMKIT_", "LABEL_STUDIO_")) or key in ("LOCAL_FILES_DOCUMENT_ROOT", "BASIC_AUTH_USER",
                                                                  "BASIC_AUTH_PASS"):
            monkeypatch.delenv(key, raising=False)


# -- a local image host -----------------------------------------------------------------------
class ImageServer:
    """Serves tests' images:
    /public/<name>            anyone
    /private/<name>           only with `Authorization: Token <token>` or `Bearer <access>`
    /redirect/<name>          302 to the other host alias (localhost <-> 127.0.0.1) /echo-auth/<name>
    /echo-auth/<name>         the image, recording the Authorization header it got
    /api/token/refresh/       {"refresh": <pat>} -> {"access": <jwt>} (a fake Label Studio)
    /tasks/<id>/presign/?fileuri=<base64 uri>   with the key: 303 to a "presigned" /echo-auth URL
    /missing                  404
    /text                     200 text/html, not an image
    """

    def __init__(self, images_dir: Path):
        self.images_dir = images_dir
        self.token = "0f0e0d0c0b0a09080706050403020100ffeeddcc"
        self.pat = _fake_jwt({"token_type": "refresh", "exp": int(time.time()) + 86400})
        self.access = _fake_jwt({"token_type": "access", "exp": int(time.time()) + 300})
        self.seen_auth: list[tuple[str, str | None]] = []
        self.refresh_calls = 0
        self.presigned: list[str] = []
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", ctype="image/jpeg", headers=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _image(self, name):
                path = server.images_dir / Path(name).name
                if not path.is_file():
                    return self._send(404, b"no such image", "text/plain")
                return self._send(200, path.read_bytes())

            def do_GET(self):
                path = urlsplit(self.path).path
                server.hits[path] = server.hits.get(path, 0) + 1
                auth = self.headers.get("Authorization")
                kind, _, name = path.lstrip("/").partition("/")
                if kind == "public":
                    return self._image(name)
                if kind == "private":
                    if auth in (f"Token {server.token}", f"Bearer {server.access}"):
                        return self._image(name)
                    return self._send(401, b'{"detail":"Authentication credentials were not provided."}',
                                      "application/json")
                if kind == "redirect":
                    host = self.headers["Host"]
                    other = host.replace("127.0.0.1", "localhost") if "127.0.0.1" in host else host.replace(
                        "localhost", "127.0.0.1")
                    return self._send(302, b"", "text/plain", {"Location": f"http://{other}/echo-auth/{name}"})
                if kind == "echo-auth":
                    server.seen_auth.append((path, auth))
                    return self._image(name)
                if kind == "tasks" and "/presign/" in path:
                    # Label Studio's cloud-storage resolver: checks the key, redirects to a presigned URL
                    if auth not in (f"Token {server.token}", f"Bearer {server.access}"):
                        return self._send(401, b"{}", "application/json")
                    from urllib.parse import parse_qs

                    uri = base64.urlsafe_b64decode(parse_qs(urlsplit(self.path).query)["fileuri"][0]).decode()
                    server.presigned.append(uri)
                    host = self.headers["Host"].replace("127.0.0.1", "localhost")
                    return self._send(303, b"", "text/plain", {
                        "Location": f"http://{host}/echo-auth/{uri.rsplit('/', 1)[-1]}?X-Amz-Signature=abc"})
                if kind == "text":
                    return self._send(200, b"<html>login page</html>", "text/html")
                return self._send(404, b"not found", "text/plain")

            def do_POST(self):
                path = urlsplit(self.path).path
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if path == "/api/token/refresh/":
                    server.refresh_calls += 1
                    data = json.loads(body or b"{}")
                    if data.get("refresh") == server.pat:
                        return self._send(200, json.dumps({"access": server.access}).encode(), "application/json")
                    return self._send(401, b'{"detail":"Token is invalid"}', "application/json")
                return self._send(404, b"", "text/plain")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _fake_jwt(payload: dict) -> str:
    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(payload)}.c2lnbmF0dXJl"


@pytest.fixture(scope="session")
def image_server(images_dir):
    server = ImageServer(images_dir)
    yield server
    server.close()


# -- a real Label Studio -----------------------------------------------------------------------
class LabelStudio:
    def __init__(self, url: str, token: str, proc: subprocess.Popen, log: Path, start_s: float):
        self.url, self.token, self.proc, self.log, self.start_s = url, token, proc, log, start_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def api(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 200)
        return self.session.request(method, self.url + path, **kw)

    def ok(self, method: str, path: str, **kw):
        r = self.api(method, path, **kw)
        assert r.status_code < 300, f"{method} {path} -> {r.status_code}: {r.text[:800]}"
        return r.json() if r.content else None

    def create_project(self, title: str, config: str = CONFIG_ALL, **extra) -> int:
        return self.ok("POST", "/api/projects/", json={"title": title, "label_config": config, **extra})["id"]

    def upload(self, project: int, image: Path) -> int:
        with open(image, "rb") as f:
            self.ok("POST", f"/api/projects/{project}/import", files={"file": (image.name, f, "image/jpeg")})
        return self.tasks(project)[-1]["id"]

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        self.ok("POST", f"/api/projects/{project}/import", json=tasks)
        return [t["id"] for t in self.tasks(project)]

    def tasks(self, project: int) -> list[dict]:
        return sorted(self.ok("GET", "/api/tasks/", params={"project": project, "page_size": 100})["tasks"],
                      key=lambda t: t["id"])

    def connect(self, project: int, backend_url: str, interactive: bool = True, **extra) -> int:
        return self.ok("POST", "/api/ml", json={"url": backend_url, "project": project, "title": "samkit",
                                                "is_interactive": interactive, **extra})["id"]


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory, shared_dir) -> LabelStudio:
    exe = LS_VENV / "bin" / "label-studio"
    if not exe.exists():
        pytest.fail(f"Label Studio is not installed at {LS_VENV}: run tests/setup/label_studio.sh")
    port = free_port()
    data_dir = tmp_path_factory.mktemp("label-studio-data")
    log = data_dir / "label-studio.log"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{LS_VENV / 'bin'}:{env.get('PATH', '')}"
    env.update({
        # Both are needed for Label Studio to call a backend on 127.0.0.1 / a private network.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": str(shared_dir / "data"),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false",
        "LOG_LEVEL": "WARNING",
    })
    cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
           "--data-dir", str(data_dir), "--username", LS_USER, "--password", LS_PASSWORD,
           "--user-token", LS_TOKEN, "--enable-legacy-api-token"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=data_dir,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        waited = wait_http(f"{url}/api/current-user/whoami", LS_START_TIMEOUT, proc, log,
                           headers={"Authorization": f"Token {LS_TOKEN}"})
        print(f"\nLabel Studio up in {waited:.1f} s at {url}")
        yield LabelStudio(url, LS_TOKEN, proc, log, waited)
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def backend_server(mobile_sam_checkpoint, tmp_path_factory):
    """The backend started like a user does, as its own process, connected to nothing yet
    (Label Studio's URL and key arrive with /setup)."""
    port = free_port()
    log = tmp_path_factory.mktemp("backend") / "backend.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMKIT_", "LABEL_STUDIO_"))}
    env.update({
        "SAMKIT_CHECKPOINT": str(mobile_sam_checkpoint), "SAMKIT_DEVICE": "cpu",
        # Random weights need zero thresholds for segment-everything to keep any mask; a small
        # grid keeps batch pre-labelling quick on CPU.
        "SAMKIT_LS_POINTS_PER_SIDE": "4", "SAMKIT_LS_PRED_IOU_THRESH": "0", "SAMKIT_LS_STABILITY_SCORE_THRESH": "0",
        "SAMKIT_LS_MAX_REGIONS": "3", "SAMKIT_LS_CACHE_SIZE": "16",
    })
    cmd = [*serve_command(), "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120, proc, log)
        yield Backend(url, proc, log)
    finally:
        stop_process(proc)


def serve_command() -> list[str]:
    return [*samkit_command(), "label-studio", "serve"]


class Backend:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url, self.proc, self.log = url, proc, log

    def stats(self) -> dict:
        return requests.get(f"{self.url}/stats", timeout=10).json()


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is not installed: run tests/setup/label_studio.sh (apt-get install chromium)")
    return path
