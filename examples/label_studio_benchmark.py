"""Interactive latency of the Label Studio backend: first click on an image (encoder + decoder)
against later clicks (decoder only, embedding from the cache), measured over HTTP like Label
Studio calls it.

    python examples/label_studio_benchmark.py --checkpoint path/to/mobile_sam.pt [--images DIR] [--clicks 10]

Starts `samkit label-studio serve` on a free port and a small HTTP server for the images, sends
the request body Label Studio 1.23.2 sends for a smart-keypoint click, and prints per-image
timings plus the backend's own breakdown (/stats last_timings).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
CONFIG = (HERE / "label_studio_config.xml").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def click_body(url: str, w: int, h: int, points: list[tuple[float, float, bool]]) -> dict:
    result = [{"original_width": w, "original_height": h, "image_rotation": 0,
               "value": {"x": x, "y": y, "width": 0.26, "keypointlabels": ["Object"]}, "is_positive": pos,
               "id": f"k{i}", "from_name": "keypoint", "to_name": "image", "type": "keypointlabels",
               "origin": "manual"} for i, (x, y, pos) in enumerate(points)]
    return {"tasks": [{"id": 1, "data": {"image": url}, "annotations": [], "predictions": [], "drafts": []}],
            "project": "1.0", "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": {"result": result}}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", type=Path, default=HERE / "images")
    ap.add_argument("--clicks", type=int, default=10, help="later clicks per image")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--output", choices=("auto", "brush", "polygon"), default="auto")
    ap.add_argument("--threads", help="PyTorch CPU threads in the backend (SAMKIT_LS_THREADS)")
    args = ap.parse_args()

    from PIL import Image

    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    handler = functools.partial(Quiet, directory=str(args.images))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    img_base = f"http://127.0.0.1:{httpd.server_address[1]}"

    port = free_port()
    exe = shutil.which("samkit")
    cmd = [exe, "label-studio", "serve"] if exe else [sys.executable, "-m", "samkit.label_studio", "serve"]
    env = {**os.environ, "SAMKIT_CHECKPOINT": args.checkpoint, "SAMKIT_DEVICE": args.device,
           "SAMKIT_LS_OUTPUT": args.output, "SAMKIT_LS_LOG_LEVEL": "WARNING",
           **({"SAMKIT_LS_THREADS": args.threads} if args.threads else {})}
    proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(port)], env=env, start_new_session=True)
    backend = f"http://127.0.0.1:{port}"
    rows = []
    try:
        t0 = time.monotonic()
        while True:
            try:
                if requests.get(f"{backend}/health", timeout=1).json().get("ready"):
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - t0 > 300 or proc.poll() is not None:
                raise SystemExit("the backend did not start")
            time.sleep(0.5)
        time.sleep(3)  # let the warm-up imports finish
        for path in images:
            w, h = Image.open(path).size
            url = f"{img_base}/{path.name}"
            t = time.perf_counter()
            r = requests.post(f"{backend}/predict", json=click_body(url, w, h, [(40, 50, True)]), timeout=300)
            r.raise_for_status()
            first = time.perf_counter() - t
            first_break = requests.get(f"{backend}/stats").json()["last_timings"]
            later, breaks = [], []
            for i in range(args.clicks):
                pts = [(40, 50, True), (60 + i, 30, False), (45, 55 + i, True)][: 1 + i % 3]
                t = time.perf_counter()
                requests.post(f"{backend}/predict", json=click_body(url, w, h, pts), timeout=300).raise_for_status()
                later.append(time.perf_counter() - t)
                breaks.append(requests.get(f"{backend}/stats").json()["last_timings"])
            rows.append({"image": path.name, "size": f"{w}x{h}", "first_click_s": round(first, 3),
                         "first_embed_s": round(first_break["embed_s"], 3),
                         "later_click_median_s": round(statistics.median(later), 3),
                         "later_click_p90_s": round(sorted(later)[int(0.9 * (len(later) - 1))], 3),
                         "later_decode_median_s": round(statistics.median(b["decode_s"] for b in breaks), 3),
                         "later_regions_median_s": round(statistics.median(b["encode_regions_s"] for b in breaks), 3)})
            print(json.dumps(rows[-1]))
        stats = requests.get(f"{backend}/stats").json()
        print(f"encoder runs: {stats['encoder_calls']} for {len(images)} images and "
              f"{len(images) * (args.clicks + 1)} clicks")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
