#!/usr/bin/env python
"""A Label Studio click: samkit's backend against what Label Studio's own SAM example does.

Label Studio's example backend (label-studio-ml-backend, examples/segment_anything_model) answers
a smart keypoint with the official SamPredictor on an image already set, and encodes the mask
with label_studio_sdk's brush.mask2rle. On the same weights, image and click, alternating the
two sides' calls, this times

* click to brush RLE: samkit's Predictor.predict(best_only=True, return_low_res=False) and samkit.label_studio's
  brush_rle, against the official predict + argmax of the scores + the SDK's mask2rle (the
  byte strings are checked to be equal);
* the brush RLE alone, on that click's mask and on a smooth mask (an ellipse at image size: what a
  trained model's masks look like; the seeded random weights used without --checkpoint give
  ragged masks with tens of thousands of runs);
* the whole /predict request through samkit's backend app in-process (a real Label Studio
  request body, JSON in and out, the image read once from a local-files folder and then cached),
  with the backend's own breakdown of where the time went. The example backend has no
  equivalent here (it needs Label Studio's server package), so that row has no ratio.

    python benchmarks/bench_label_studio.py                       # MobileSAM, truck.jpg
    python benchmarks/bench_label_studio.py --model vit_b --repeats 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_core  # noqa: E402  (models, alternating timer, table)
from bench_core import Row, log, official_call, timeit, timeit_pair  # noqa: E402

import samkit  # noqa: E402
from samkit.label_studio.regions import brush_rle  # noqa: E402
from samkit.predictor import ImageState  # noqa: E402


def smooth_mask(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1


def request_body(image_name: str, w: int, h: int, x: float, y: float) -> dict:
    """A Label Studio 1.23 interactive request (one smart keypoint) for a local-files image."""
    return {
        "tasks": [{"id": 1, "data": {"image": f"/data/local-files/?d={image_name}"}}],
        "project": "1.1795457690",
        "label_config": (REPO / "plugins" / "label_studio" / "label_config.xml").read_text(),
        "params": {"context": {"result": [{
            "original_width": w, "original_height": h, "image_rotation": 0,
            "value": {"x": 100 * x / w, "y": 100 * y / h, "width": 0.26, "keypointlabels": ["Object"]},
            "is_positive": True, "id": "kp1", "from_name": "keypoint", "to_name": "image",
            "type": "keypointlabels", "origin": "manual",
        }]}},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["vit_b", "mobile_sam"], default="mobile_sam")
    ap.add_argument("--checkpoint", help="an official checkpoint file (default: seeded random weights)")
    ap.add_argument("--image", default=str(bench_core.DEFAULT_IMAGE))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--markdown", default="", help="also write the table here as markdown")
    args = ap.parse_args(argv)

    from fastapi.testclient import TestClient
    from label_studio_sdk.converter.brush import mask2rle

    from samkit.label_studio.app import create_app
    from samkit.label_studio.backend import SamBackend
    from samkit.label_studio.settings import Settings

    sam = bench_core.oracle.official()
    image_path = Path(args.image)
    image = samkit.load_image(image_path)
    h, w = image.shape[:2]
    start = bench_core.machine()
    log(f"Label Studio click benchmark on {image_path.name} ({w}x{h}); {start}")
    ours, _, _, official, _ = bench_core.build_models(args.model, args.checkpoint)
    label = {"vit_b": "ViT-B", "mobile_sam": "MobileSAM"}[args.model]

    # one embedding for both sides, so that only the click is timed
    off_pred = sam.SamPredictor(official)
    resized = off_pred.transform.apply_image(image)
    features = ours.embed_image(official.preprocess(
        torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float()))
    input_size = tuple(resized.shape[:2])
    pred = samkit.Predictor(ours)
    pred.set_image_state(ImageState(features, (h, w), input_size))
    off_pred.features = features
    off_pred.original_size, off_pred.input_size, off_pred.is_image_set = (h, w), input_size, True
    point, one = np.array([[w * 0.55, h * 0.45]]), np.array([1])

    def ours_click():
        masks, _, _ = pred.predict(point_coords=point, point_labels=one, best_only=True, return_low_res=False)
        return masks[0], brush_rle(masks[0])

    def official_click():
        masks, scores, _ = off_pred.predict(point_coords=point, point_labels=one)
        best = masks[np.argmax(scores)]
        return best, mask2rle(best.astype(np.uint8) * np.uint8(255))

    rows = []
    log("   click to brush RLE")
    (t_o, t_f), ((mask_o, click_rle), (mask_f, rle_f)) = timeit_pair(
        ours_click, official_call(official_click), args.repeats
    )
    # Our masks are upscaled with OpenCV: a pixel whose logit is within float32 rounding of 0
    # may change sides, and then the RLE bytes differ with it.
    differ = int(np.count_nonzero(mask_o != mask_f))
    rows.append(Row(label, f"click to brush RLE at {w}x{h}", "fp32", t_o, t_f,
                    f"mask pixels differing from the official's: {differ} of {mask_f.size}; "
                    f"RLE bytes equal: {click_rle == rle_f} ({len(click_rle)} bytes)"))

    click_mask = pred.predict(point_coords=point, point_labels=one, best_only=True, return_low_res=False)[0][0]
    runs = int(np.count_nonzero(click_mask.reshape(-1)[1:] != click_mask.reshape(-1)[:-1])) + 1
    for name, mask in (
        (f"that click's mask ({runs} runs)", click_mask),
        ("a smooth mask (ellipse)", smooth_mask(h, w)),
    ):
        log(f"   brush RLE of {name}")
        (t_o, t_f), (rle_o, rle_f) = timeit_pair(
            lambda: brush_rle(mask), lambda: mask2rle(mask.astype(np.uint8) * np.uint8(255)), args.repeats)
        rows.append(Row(label, f"brush RLE of {name}", "-", t_o, t_f, f"RLE bytes equal: {rle_o == rle_f}"))

    log("   /predict through the backend app")
    # float32 clicks, as the Predictor timed above (the backend's default on a CPU with bfloat16
    # dot products is the reduced-precision decoder: bench_sam2.py times that)
    settings = Settings.from_env(checkpoint=str(args.checkpoint or "samkit-benchmark"), device="cpu",
                                 local_files_root=str(image_path.parent), click_dtype="float32")
    backend = SamBackend(settings, model=ours)
    body = request_body(image_path.name, w, h, *point[0])
    timings = []
    with TestClient(create_app(settings, backend=backend, load=False)) as client:
        def request():
            response = client.post("/predict", json=body)
            assert response.status_code == 200, response.text[:500]
            timings.append(dict(backend.last_timings))
            return response.content

        request()  # the image read and embedded once
        timings.clear()
        t_req, content = timeit(request, args.repeats)
    brush = [r for r in json.loads(content)["results"][0]["result"] if r["type"] == "brushlabels"]
    parts = {k: statistics.median(t[k] for t in timings) * 1000 for k in timings[0]}
    breakdown = ", ".join(f"{k.removesuffix('_s')} {v:.1f} ms" for k, v in parts.items() if k != "total_s")
    rows.append(Row(label, "one click: the /predict request, in-process", "fp32", t_req, None,
                    f"the shipped config's regions (brush), {len(content) // 1024} KB of JSON; backend: {breakdown}; "
                    f"its brush RLE equals the click's above: {bool(brush) and brush[0]['value']['rle'] == click_rle}"))
    end = bench_core.machine()
    print()
    print(bench_core.table(rows))
    if args.markdown:
        text = (f"`python benchmarks/bench_label_studio.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
                f"on {image_path.name} ({w}x{h}), median of {args.repeats} after a warm-up.\n\n"
                f"Machine at start: {start}.  \nAt end: {end}.\n\n" + bench_core.table(rows, markdown=True) + "\n")
        Path(args.markdown).write_text(text)
        log(f"\nmarkdown table written to {args.markdown}")


if __name__ == "__main__":
    main()
