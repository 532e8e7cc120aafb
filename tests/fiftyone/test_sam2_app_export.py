"""The FiftyOne App's in-browser SAM 2 runs a samkit SAM 2.1 export (README, "Export to ONNX":
the FiftyOne App recipe).

The recipe: ``samkit export MODEL -o DIR --fiftyone-app``; serve DIR over HTTP(S) with CORS (a
bucket, a CDN, any static server) and set FIFTYONE_MODEL_WEIGHTS_BASE_SAM2 to its URL for the App
server. (fiftyone 1.19, installed here, takes a URL only: its runtime_assets route joins the
variable and the file name into the URL the browser fetches. Newer FiftyOne also takes a local
folder and streams it itself.) Tested with FiftyOne's own parts, no stand-ins:

* the App server (fo.launch_app, fiftyone/server/routes/runtime_assets.py) resolves the two file
  names to our served folder, whose bytes the browser then downloads;
* the App's own SAM 2 web worker (fiftyone/server/static/assets/worker-*.js, with onnxruntime-web
  1.24) runs in headless Chromium on the App's origin: it downloads the files through those routes,
  opens them in onnxruntime-web, encodes an image and decodes a click, and its mask is the one our
  graphs give in onnxruntime (Python) for the same image and click.

The model is SAM 2.1 tiny from samkit's build_sam2 with seeded weights (hypernetwork outputs
scaled so that the logits spread like a trained model's).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import tempfile
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import fiftyone as fo
import samkit
from samkit.export.onnx_predictor import read_metadata
from samkit.export.sam2 import DECODER_INPUTS, FIFTYONE_APP_ENV, FIFTYONE_APP_FILES

from fo_checks import CHROMIUM, free_port, launch_app

# no --disable-gpu: with it Chromium never answers the worker's WebGPU adapter request (without,
# it answers "no adapter" and the worker falls back to WebAssembly)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLICK = (0.45, 0.55)  # normalised x, y, as the App sends clicks to its worker


def app_worker() -> Path:
    """The App's SAM 2 web worker in the installed fiftyone (its file name carries a build hash)."""
    assets = Path(fo.__file__).parent / "server" / "static" / "assets"
    found = [p for p in assets.glob("worker-*.js") if FIFTYONE_APP_FILES[0] in p.read_text(errors="ignore")]
    assert len(found) == 1, f"expected one SAM 2 worker in {assets}, found {found}"
    return found[0]


@contextmanager
def cors_static_server(folder: Path):
    """The folder over HTTP on 127.0.0.1 with `Access-Control-Allow-Origin: *`: the App's worker
    fetches the files from its own origin (cross-origin, under the App's COEP header), so whatever
    serves them must allow that, as a bucket or CDN configured for the App does."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def end_headers(self):
            self.send_header("Access-Control-Allow-Origin", "*")
            super().end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from samkit.modeling.sam2.model import build_sam2

    torch.manual_seed(7)
    model = build_sam2("tiny").eval()
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(20.0)
            mlp.layers[-1].bias.mul_(20.0)
    out = tmp_path_factory.mktemp("sam2_app") / "sam2.1_tiny"
    samkit.export(model, out, fiftyone_app=True)
    return out


@pytest.fixture(scope="module")
def image(images_dir) -> np.ndarray:
    """A 1024 x 1024 image: the App's canvas resize to the encoder's square is then a copy, so its
    input is ours to float32 rounding."""
    truck = samkit.load_image(images_dir / "truck.jpg")
    return np.ascontiguousarray(truck[:1024, 300:1324])


def test_folder_has_what_the_app_downloads(export_dir):
    """The names the App's worker asks for and the inputs it feeds (read from the worker itself),
    and the ORT-format encoder equals the ONNX one."""
    import onnxruntime as ort

    worker = app_worker().read_text(errors="ignore")
    for name in FIFTYONE_APP_FILES:
        assert f'"{name}"' in worker and (export_dir / name).is_file(), name
    assert "/runtime-assets/models/" in worker
    for name in DECODER_INPUTS + ("masks", "iou_predictions", "image_embed"):
        assert name in worker, name
    assert "orig_im_size" not in worker  # why our decoder has no such input: the App never feeds it
    meta = read_metadata(export_dir)
    assert meta["fiftyone_app"]["files"] == list(FIFTYONE_APP_FILES)
    assert meta["parts"]["encoder"]["ort_file"] == FIFTYONE_APP_FILES[0]

    pixels = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    onnx_out = ort.InferenceSession(str(export_dir / "encoder.onnx")).run(None, {"image": pixels})
    ort_out = ort.InferenceSession(str(export_dir / FIFTYONE_APP_FILES[0])).run(None, {"image": pixels})
    for a, b in zip(onnx_out, ort_out):
        assert np.abs(a - b).max() < 1e-4


def expected_app_result(export_dir: Path, image: np.ndarray):
    """What the App's worker computes, with our graphs in onnxruntime (Python): its preprocessing,
    the click in the 1024 frame, the best of the three masks by predicted IoU, the mask's bounding
    box in the image and the mask inside it (bilinear from the 256 x 256 logits, then sigmoid), as
    the worker's code does these steps."""
    import onnxruntime as ort

    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    pixels = ((image.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    high_res_0, high_res_1, embed = ort.InferenceSession(str(export_dir / "encoder.onnx")).run(None, {"image": pixels})
    masks, iou = ort.InferenceSession(str(export_dir / "decoder.onnx")).run(["masks", "iou_predictions"], {
        "image_embed": embed, "high_res_feats_0": high_res_0, "high_res_feats_1": high_res_1,
        "point_coords": np.array([[[CLICK[0] * 1024, CLICK[1] * 1024]]], np.float32),
        "point_labels": np.array([[1]], np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)})
    low = masks[0, int(np.argmax(iou[0]))].astype(np.float64)
    height, width = image.shape[:2]
    rows, cols = np.nonzero(low > 0)
    assert len(rows), "the click gave an empty mask"
    x0, y0 = max(0, int(np.floor(cols.min() / 256 * width))), max(0, int(np.floor(rows.min() / 256 * height)))
    x1 = min(width - 1, int(np.ceil(cols.max() / 256 * width)))
    y1 = min(height - 1, int(np.ceil(rows.max() / 256 * height)))
    xs = (np.arange(x0, x1 + 1) / width * 256)[None, :]
    ys = (np.arange(y0, y1 + 1) / height * 256)[:, None]
    c0 = np.clip(np.floor(xs), 0, 255).astype(int)
    r0 = np.clip(np.floor(ys), 0, 255).astype(int)
    c1, r1 = np.minimum(c0 + 1, 255), np.minimum(r0 + 1, 255)
    fx, fy = xs - np.floor(xs), ys - np.floor(ys)
    value = (low[r0, c0] * (1 - fx) * (1 - fy) + low[r0, c1] * fx * (1 - fy)
             + low[r1, c0] * (1 - fx) * fy + low[r1, c1] * fx * fy)
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1), 1 / (1 + np.exp(-value))


RUN_WORKER = """
async ({workerUrl, imageUrl, points}) => {
  const worker = new Worker(workerUrl, {type: "module"});
  const log = [];
  const pending = new Map();
  const ready = new Promise((resolve) => {
    worker.addEventListener("message", (event) => {
      const m = event.data;
      if (m.type === "ready") resolve();
      if (m.id !== undefined && pending.has(m.id)) pending.get(m.id)(m);
      else if (m.type !== "progress") log.push(JSON.stringify(m).slice(0, 300));
    });
  });
  worker.addEventListener("error", (e) => log.push("worker error: " + e.message));
  await ready;
  worker.postMessage({type: "init", payload: {origin: location.origin, headers: {}, pathPrefix: ""}});
  const call = (id, type, payload) => new Promise((resolve) => {
    pending.set(id, resolve);
    worker.postMessage({id, type, payload});
  });
  const loaded = await call(1, "loadModel");
  if (!loaded.success) return {error: "loadModel: " + loaded.error, log};
  const out = await call(2, "embedAndDecode", {imageUrl, points});
  if (!out.success) return {error: "embedAndDecode: " + out.error, log};
  const r = out.result;
  return {mask: Array.from(r.mask), maskWidth: r.maskWidth, maskHeight: r.maskHeight, bbox: r.bbox, log};
}
"""


def test_app_worker_runs_the_export(export_dir, image, fiftyone_env):
    """The App server points its worker at our served folder; the App's worker, in Chromium,
    segments a click with our files, and its mask is ours."""
    assert os.access(CHROMIUM, os.X_OK), "Chromium missing: run tests/setup/fiftyone.sh"
    port = free_port()
    env = fiftyone_env()
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(cors_static_server(export_dir))
        session = launch_app(port, HOME=env["HOME"], **{FIFTYONE_APP_ENV: base})
        stack.callback(session.close)
        result = _run_app_worker(f"http://127.0.0.1:{port}", base, export_dir, image)
    assert "error" not in result, result
    box, probabilities = expected_app_result(export_dir, image)
    height, width = image.shape[:2]
    got_box = (round(result["bbox"]["x"] * width), round(result["bbox"]["y"] * height),
               result["maskWidth"], result["maskHeight"])
    assert got_box == box
    got = np.asarray(result["mask"], np.float64).reshape(result["maskHeight"], result["maskWidth"])
    assert np.abs(got - probabilities).max() < 1e-3
    assert 0 < (got > 0.5).mean() < 1


def _run_app_worker(url: str, base: str, export_dir: Path, image: np.ndarray) -> dict:
    """Check what the App server's route resolves, then run the App's worker on the App's origin
    in Chromium: load the model, encode the image and decode one click."""
    from playwright.sync_api import sync_playwright

    # the server's route resolves each file the worker asks for to our served folder
    for name in FIFTYONE_APP_FILES:
        resolved = httpx.get(f"{url}/runtime-assets/models/sam2/{name}", timeout=30).json()["url"]
        assert resolved == base + name
        served = httpx.get(resolved, timeout=120)
        assert served.status_code == 200 and served.content == (export_dir / name).read_bytes(), name

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    image_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        # a profile on disk: the worker caches the files in IndexedDB, which in an in-memory
        # (incognito) context never completes for a 130 MB file; the App's users have a profile
        browser = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_ARGS)
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(600_000)
            # any page of the App's origin (and its cross-origin-isolation headers) hosts the worker
            page.goto(f"{url}/runtime-assets/models/sam2/decoder.onnx", wait_until="load")
            return page.evaluate(RUN_WORKER, {
                "workerUrl": f"/assets/{app_worker().name}", "imageUrl": image_url,
                "points": [{"x": CLICK[0], "y": CLICK[1], "label": 1}]})
        finally:
            browser.close()
