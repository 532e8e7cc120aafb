"""Start what each installed extra provides, inside a fresh virtualenv (run with that venv's python).

    python tests/extras/smoke.py --checkpoint CKPT core label-studio fiftyone geo dask

Standard library only at the top: it runs in environments that have only some extras. Each check
runs the commands the README shows for that extra, for real, and exits non-zero naming the first
one that failed. tests/extras/test_extras_install.py creates the virtualenvs and calls this.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SAMKIT = str(BIN / "samkit")


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with its output (the whole point of this script)."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)
    if proc.returncode != 0:
        raise SystemExit(f"FAILED: {' '.join(args)} (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}")
    return proc


def check_core(work: Path, checkpoint: str) -> None:
    run(SAMKIT, "--help")
    out = work / "core-out"
    run(SAMKIT, "everything", str(REPO / "examples" / "images" / "dog.jpg"), "--model", checkpoint,
        "--points-per-side", "4", "-o", str(out))
    assert (out / "overlay.png").is_file() and (out / "masks.json").is_file(), "samkit everything wrote nothing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def check_label_studio(work: Path, checkpoint: str) -> None:
    """`samkit label-studio serve` starts, loads the model, answers /health, /setup and a click."""
    port = free_port()
    log = open(work / "ls-serve.log", "w")
    images = REPO / "examples" / "images"
    server = subprocess.Popen([SAMKIT, "label-studio", "serve", "--host", "127.0.0.1", "--port", str(port),
                               "--checkpoint", checkpoint, "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "LOCAL_FILES_DOCUMENT_ROOT": str(images)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, health = http("GET", base + "/health")
                if status == 200 and health.get("ready"):
                    break
            except (urllib.error.URLError, ConnectionError):
                status, health = None, None
            if server.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise SystemExit(f"FAILED: the backend did not come up ({status} {health}):\n"
                                 + (work / "ls-serve.log").read_text())
            time.sleep(0.5)
        config = run(SAMKIT, "label-studio", "config").stdout
        status, body = http("POST", base + "/setup", {"project": "1.1", "schema": config})
        assert status == 200, (status, body)
        click = {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=dog.jpg"}}], "label_config": config,
                 "params": {"context": {"result": [{
                     "original_width": 0, "original_height": 0, "is_positive": True, "id": "k",
                     "value": {"x": 50, "y": 50, "keypointlabels": ["Object"]},
                     "from_name": "keypoint", "to_name": "image", "type": "keypointlabels"}]}}}
        status, body = http("POST", base + "/predict", click, timeout=300)  # the first click embeds the image
        assert status == 200, (status, body)
        regions = body["results"][0]["result"]
        assert regions and all(r["type"] in ("brushlabels", "polygonlabels") for r in regions), body
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def check_fiftyone(work: Path, checkpoint: str) -> None:
    """FiftyOne imports with its App server; the plugin installs; a dataset in a fresh database
    gets masks from SamModel through apply_model (FiftyOne starts its own MongoDB)."""
    run(sys.executable, "-c", "import fiftyone, fiftyone.server.app, fiftyone.operators; "
                              "import samkit.fiftyone.operators, samkit.fiftyone.model")
    plugins = work / "fo-plugins"
    run(SAMKIT, "fiftyone", "install", "--plugins-dir", str(plugins))
    assert (plugins / "@samkit" / "fiftyone" / "fiftyone.yml").is_file(), "samkit fiftyone install linked nothing"
    env = {**os.environ, "FIFTYONE_DATABASE_DIR": str(work / "fo-db"), "FIFTYONE_DO_NOT_TRACK": "true",
           "HOME": str(work / "fo-home"), "FIFTYONE_DATABASE_VALIDATION": "false"}
    image = REPO / "examples" / "images" / "dog.jpg"
    out = run(sys.executable, "-c", f"""
import fiftyone as fo
from samkit.fiftyone import SamModel
dataset = fo.Dataset()
dataset.add_sample(fo.Sample(filepath={str(image)!r}))
dataset.apply_model(SamModel(model={checkpoint!r}, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0,
                             device="cpu"), "sam")
print(len(dataset.first()["sam"].detections))
""", env=env)
    assert int(out.stdout.strip().splitlines()[-1]) > 0, out.stdout


def check_geo(work: Path, dask: bool) -> None:
    """A small GeoTIFF through `samkit geo info` and `geo vectorize` (the documented test segmenter),
    written as GeoPackage and GeoParquet and read back."""
    raster = work / "scene.tif"
    run(sys.executable, "-c", f"""
import numpy as np, rasterio
from rasterio.transform import from_origin
img = np.zeros((3, 300, 400), np.uint8)
img[0, 50:150, 60:200] = 200; img[1, 180:260, 250:380] = 120
with rasterio.open({str(raster)!r}, "w", driver="GTiff", width=400, height=300, count=3, dtype="uint8",
                   crs="EPSG:32636", transform=from_origin(500000, 100300, 1, 1)) as dst:
    dst.write(img)
""")
    run(SAMKIT, "geo", "info", str(raster))
    extra = ["--dask", "1"] if dask else []
    for name in ("objects.gpkg", "objects.parquet"):
        run(SAMKIT, "geo", "vectorize", str(raster), "-o", str(work / name), "--tile-size", "256",
            "--generator", "samkit.geo.testing:LabelSegmenter", "-q", *extra)
        read = "read_parquet" if name.endswith(".parquet") else "read_file"
        count = run(sys.executable, "-c", f"import geopandas; print(len(geopandas.{read}({str(work / name)!r})))")
        assert count.stdout.strip() == "2", f"{name}: expected 2 polygons, got {count.stdout.strip()}"


def check_dask(work: Path) -> None:
    run(sys.executable, "-c", "from distributed import Client, LocalCluster\n"
                              "with LocalCluster(n_workers=1, processes=False) as c, Client(c) as cl:\n"
                              "    assert cl.submit(sum, [1, 2]).result() == 3")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a MobileSAM checkpoint file (seeded random weights)")
    ap.add_argument("extras", nargs="+", choices=("core", "label-studio", "fiftyone", "geo", "dask"))
    args = ap.parse_args(argv)
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    with tempfile.TemporaryDirectory(prefix="samkit-extras-") as tmp:
        work = Path(tmp)
        for extra in args.extras:
            start = time.monotonic()
            if extra == "core":
                check_core(work, args.checkpoint)
            elif extra == "label-studio":
                check_label_studio(work, args.checkpoint)
            elif extra == "fiftyone":
                check_fiftyone(work, args.checkpoint)
            elif extra == "geo":
                check_geo(work, dask="dask" in args.extras)
            else:
                check_dask(work)
            print(f"{extra}: ok ({time.monotonic() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
