#!/usr/bin/env python
"""A Label Studio click as Label Studio makes it, on a quiet machine and on a busy one.

Starts the backend as users do (`samkit label-studio serve`, one process per PyTorch thread count
asked for, all loaded with the same model), and times the smart-keypoint request Label Studio
1.23 sends (an HTTP POST of the task and the click to /predict, the answer read to the end) on
an image already embedded. The servers' clicks alternate, so a machine whose speed drifts slows
them alike. Then the same with one busy-loop process per core competing for the CPU (what a
laptop running other work, or a VM sharing its cores, looks like), and prints median and
10th-90th percentile times per setting, plus the size of the answer for the shipped labeling
config (brush only) and for one with polygons too. The CPU (model, vector flags, L3) is printed
with the table, for benchmarks/RESULTS.md.

    python benchmarks/bench_label_studio_load.py                     # threads 1 and 2, 30 clicks each
    python benchmarks/bench_label_studio_load.py --threads 1 2 4 --repeats 50 --markdown /tmp/load.md
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import machine_info  # benchmarks/machine_info.py: the CPU line

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAMKIT_SHARED_DIR", REPO.parent / "shared"))
DEFAULT_IMAGE = SHARED / "data" / "images" / "truck.jpg"
MOBILE_SAM = SHARED / "reference" / "mobile_sam_random" / "mobile_sam_random.pt"
POLYGON_TOOL = ('  <PolygonLabels name="polygon" toName="image">\n    <Label value="Object"/>\n    '
                '<Label value="Background"/>\n  </PolygonLabels>\n')


def cpu_facts() -> str:
    """CPU model, family, vector extensions, cores and L3 (machine_info.cpu)."""
    return machine_info.cpu()


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spin() -> None:  # one core's worth of competing work
    while True:
        pass


def click_body(config: str, image_name: str, width: int, height: int) -> bytes:
    """Label Studio 1.23's interactive request for one smart keypoint on a local-files image."""
    return json.dumps({
        "tasks": [{"id": 1, "data": {"image": f"/data/local-files/?d={image_name}"}}],
        "project": "1.1795457690",
        "label_config": config,
        "params": {"context": {"result": [{
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": 55.0, "y": 45.0, "width": 0.26, "keypointlabels": ["Object"]},
            "is_positive": True, "id": "kp1", "from_name": "keypoint", "to_name": "image",
            "type": "keypointlabels", "origin": "manual",
        }]}},
    }).encode()


class Server:
    """`samkit label-studio serve` with SAMKIT_LS_THREADS=threads (None: the default)."""

    def __init__(self, threads: int | None, checkpoint: Path, image_dir: Path, log_dir: Path) -> None:
        self.threads = threads
        self.port = free_port()
        env = {**os.environ, "LOCAL_FILES_DOCUMENT_ROOT": str(image_dir), "SAMKIT_LS_LOG_LEVEL": "WARNING"}
        env.pop("SAMKIT_LS_THREADS", None)
        if threads is not None:
            env["SAMKIT_LS_THREADS"] = str(threads)
        self.log = open(log_dir / f"serve-{threads}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "samkit", "label-studio", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--checkpoint", str(checkpoint), "--device", "cpu"], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if json.loads(r.read()).get("ready"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"backend (threads {threads}) did not start: see {self.log.name}")
            time.sleep(0.5)

    def click(self, body: bytes) -> tuple[float, int, int]:
        """(seconds from sending the request to the last byte of the answer, bytes on the wire,
        bytes of JSON). Asks for gzip, as Label Studio's client (requests) does."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/predict", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Accept-Encoding": "gzip"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            content = response.read()
            gzipped = response.headers.get("Content-Encoding") == "gzip"
        elapsed = time.perf_counter() - t0
        return elapsed, len(content), len(gzip.decompress(content) if gzipped else content)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def measure(servers: list[Server], body: bytes, repeats: int) -> dict[int | None, list[float]]:
    """`repeats` clicks per server, the servers taking turns."""
    times: dict[int | None, list[float]] = {s.threads: [] for s in servers}
    for _ in range(repeats):
        for server in servers:
            times[server.threads].append(server.click(body)[0])
    return times


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return statistics.median(ordered), pick(0.1), pick(0.9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(MOBILE_SAM), help="model file (default: the seeded MobileSAM)")
    ap.add_argument("--image", default=str(DEFAULT_IMAGE))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="SAMKIT_LS_THREADS values to compare")
    ap.add_argument("--default", action="store_true", help="also a server with SAMKIT_LS_THREADS unset")
    ap.add_argument("--busy", type=int, default=os.cpu_count(), help="busy-loop processes in the loaded phase")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--markdown", default="", help="also write the table here as markdown")
    args = ap.parse_args(argv)

    from PIL import Image

    image = Path(args.image)
    width, height = Image.open(image).size
    shipped = (REPO / "plugins" / "label_studio" / "label_config.xml").read_text()
    with_polygons = shipped.replace("</View>", POLYGON_TOOL + "</View>")
    body = click_body(shipped, image.name, width, height)
    start_facts = f"{cpu_facts()}; load average {load_average()} at start"
    print(start_facts, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="samkit-ls-load-") as tmp:
        settings = [*args.threads, *([None] if args.default else [])]
        servers = [Server(t, Path(args.checkpoint), image.parent, Path(tmp)) for t in settings]
        try:
            for server in servers:  # the image is read and embedded once per server
                server.click(body)
            sizes = {name: servers[0].click(click_body(config, image.name, width, height))[1:]
                     for name, config in (("brush", shipped), ("brush+polygons", with_polygons))}
            for phase, busy in (("quiet", 0), (f"{args.busy} busy-loop processes", args.busy)):
                spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
                for p in spinners:
                    p.start()
                try:
                    time.sleep(1.0 if busy else 0.0)
                    times = measure(servers, body, args.repeats)
                finally:
                    for p in spinners:
                        p.terminate()
                        p.join()
                for threads, samples in times.items():
                    med, p10, p90 = summary(samples)
                    name = "default" if threads is None else str(threads)
                    rows.append((name, phase, med, p10, p90))
                    print(f"threads {name:>7}, {phase}: median {med * 1000:.0f} ms, p10-p90 {p10 * 1000:.0f}-"
                          f"{p90 * 1000:.0f} ms", flush=True)
        finally:
            for server in servers:
                server.close()
    end_facts = f"load average {load_average()} at end"
    head = "| SAMKIT_LS_THREADS | competing load | click, median | click, p10-p90 |"
    lines = [head, "|---|---|---|---|"]
    lines += [f"| {n} | {phase} | {m * 1000:.0f} ms | {a * 1000:.0f}-{b * 1000:.0f} ms |" for n, phase, m, a, b in rows]
    (wire, plain), (wire_polygons, plain_polygons) = ((round(v / 1024) for v in sizes[k]) for k in sizes)
    text = (f"`python benchmarks/bench_label_studio_load.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
            f" on {image.name} ({width}x{height}), {args.repeats} clicks per setting and phase, the servers "
            f"alternating.\n\n{start_facts}; {end_facts}.\n\n" + "\n".join(lines) + "\n\n"
            f"Answer to one click (gzip on the wire / JSON): {wire} / {plain} KB with the shipped config (brush), "
            f"{wire_polygons} / {plain_polygons} KB with PolygonLabels added.\n")
    print()
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
