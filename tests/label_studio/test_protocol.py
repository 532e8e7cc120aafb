"""The ML backend protocol in-process, with the payloads a real Label Studio 1.23.2 sent
(../shared/notes/label-studio-1.23.2-payloads), real photos and the seeded MobileSAM."""

from __future__ import annotations

import copy
import json
import logging
import time

import numpy as np
import pytest
from ls_helpers import CONFIG_ALL, brush_mask, holes, iou, near_boundary, polygon_mask, small_parts

import samkit
from samkit.label_studio.regions import unit_score

DOG = ("dog.jpg", 800, 534)
GROCERIES = ("groceries.jpg", 800, 534)


def interactive_body(payloads, name: str, url: str, size: tuple[int, int]) -> dict:
    body = copy.deepcopy(payloads[name]["body"])
    body["tasks"][0]["data"]["image"] = url
    for r in body["params"]["context"]["result"]:
        r["original_width"], r["original_height"] = size
    return body


def three_click_request(payloads, image_server, ref) -> tuple[dict, np.ndarray]:
    """The real 3-click request (positive, negative, positive) on dog.jpg, and the official
    predictor's mask for those clicks."""
    name, w, h = DOG
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp3",
                            f"{image_server.url}/public/{name}", (w, h))
    ctx = body["params"]["context"]["result"]
    expected, _ = ref(name, np.array([[c["value"]["x"] / 100 * w, c["value"]["y"] / 100 * h] for c in ctx]),
                      np.array([1, 0, 1]))
    return body, expected


def regions_by_type(result: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in result:
        out.setdefault(r["type"], []).append(r)
    return out


def test_health_setup_versions_webhook_in_any_order(make_client, payloads):
    client, backend = make_client()
    # versions and webhooks before any setup
    v = client.get("/versions")
    assert v.status_code == 200 and v.json()["versions"] == [backend.model_version]
    r = client.post("/webhook", json=payloads["ls_to_backend_webhook_annotation_created"]["body"])
    assert r.status_code == 200 and r.json()["action"] == "ANNOTATION_CREATED", r.text
    # START_TRAINING starts a run (201, the training protocol); with no Label Studio known yet
    # it fails in the background and says why (tests/label_studio/test_label_studio_training.py)
    r = client.post("/webhook", json=payloads["ls_to_backend_webhook_start_training"]["body"])
    assert r.status_code == 201 and r.json()["status"] == "ok" and r.json()["result"]["project"] == "1", r.text
    assert backend.trainer.wait(timeout=120)
    assert "LABEL_STUDIO_URL" in backend.trainer.jobs["1"].error
    assert client.post("/webhook", content=b"not json at all").status_code == 200
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "UP"
    s = client.post("/setup", json=payloads["ls_to_backend_setup"]["body"])
    assert s.status_code == 200 and s.json() == {"model_version": backend.model_version}
    # /setup told the backend where Label Studio is and its token, for project 1
    src = backend.source("1.1795457690")
    assert src.url == "http://127.0.0.1:8080" and src.api_key == "0123456789abcdef0123456789abcdef01234567"
    r = client.post("/train", json={})
    assert r.status_code == 400 and "without a project id" in r.json()["error"]


def test_interactive_keypoint_matches_the_predictor(make_client, payloads, image_server, ref):
    client, _ = make_client()
    name, w, h = DOG
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1",
                            f"{image_server.url}/public/{name}", (w, h))
    r = client.post("/predict", json=body)  # no /setup first: the request carries what is needed
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 1
    got = regions_by_type(results[0]["result"])
    assert set(got) == {"brushlabels", "polygonlabels"}
    kp = body["params"]["context"]["result"][0]["value"]
    expected, score = ref(name, np.array([[kp["x"] / 100 * w, kp["y"] / 100 * h]]),
                                np.array([1]), multimask=True)
    brush = got["brushlabels"][0]
    assert (brush["original_width"], brush["original_height"]) == (w, h)
    assert brush["from_name"] == "brush" and brush["to_name"] == "image"
    assert brush["value"]["brushlabels"] == ["Object"]
    mask = brush_mask(brush)
    assert mask.shape == (h, w)
    assert np.array_equal(mask, expected), "the brush RLE must decode to exactly the predicted mask"
    assert brush["score"] == pytest.approx(unit_score(score), abs=1e-4)
    polys = got["polygonlabels"]
    assert all(p["value"]["polygonlabels"] == ["Object"] and p["value"]["closed"] for p in polys)
    pts = np.array([pt for p in polys for pt in p["value"]["points"]])
    assert pts.min() >= 0 and pts.max() <= 100  # percent coordinates
    assert iou(polygon_mask(polys), expected) > 0.85


def test_interactive_negative_points_and_rectangle(make_client, payloads, image_server, ref):
    client, _ = make_client()
    name, w, h = DOG
    url = f"{image_server.url}/public/{name}"
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp3", url, (w, h))
    ctx = body["params"]["context"]["result"]
    assert [c["is_positive"] for c in ctx] == [True, False, True]
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    pts = np.array([[c["value"]["x"] / 100 * w, c["value"]["y"] / 100 * h] for c in ctx])
    expected, _ = ref(name, pts, np.array([1, 0, 1]))
    brush = regions_by_type(r.json()["results"][0]["result"])["brushlabels"][0]
    assert np.array_equal(brush_mask(brush), expected)

    body = interactive_body(payloads, "ls_to_backend_predict_interactive_rect", url, (w, h))
    body["label_config"] = CONFIG_ALL
    v = body["params"]["context"]["result"][0]["value"]
    v["rectanglelabels"] = ["Dog"]
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    box = np.array([v["x"] * w, v["y"] * h, (v["x"] + v["width"]) * w, (v["y"] + v["height"]) * h]) / 100
    expected, _ = ref(name, box=box)
    got = regions_by_type(r.json()["results"][0]["result"])
    assert np.array_equal(brush_mask(got["brushlabels"][0]), expected)
    assert got["brushlabels"][0]["value"]["brushlabels"] == ["Dog"]  # the drawn label
    assert got["polygonlabels"][0]["value"]["polygonlabels"] == ["Dog"]



def test_negative_click_hole_stays_empty_in_the_polygon(make_client, payloads, image_server, ref):
    """A mask with holes (the 3-click request with a negative click): the polygon regions fill
    back to the mask with its holes empty, up to boundary pixels, holes and parts under
    SAMKIT_LS_MIN_AREA (and, simplified, within the polygon tolerance of the outline)."""
    body, expected = three_click_request(payloads, image_server, ref)
    big, small = holes(expected, 25)
    assert big.any(), "this click's mask has no hole to test with"
    for tolerance, band in ((0.0, 0), (1.0, 2)):  # SAMKIT_LS_POLYGON_TOLERANCE
        # random weights give a ragged mask: no point limit, so the holes are drawn at this tolerance
        client, _ = make_client(polygon_tolerance=tolerance, min_area=25, max_polygon_points=10**6)
        r = client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        filled = polygon_mask(regions_by_type(r.json()["results"][0]["result"])["polygonlabels"])
        edge = near_boundary(expected, band) if band else np.zeros_like(expected)
        assert not (filled & big & ~edge).any(), "a hole came back filled"
        assert not ((filled ^ expected) & ~small & ~small_parts(expected, 25) & ~edge).any()


def test_polygon_parts_over_the_limit_are_dropped_with_a_warning(make_client, payloads, image_server, ref, caplog):
    import cv2

    client, _ = make_client(max_polygons=2, max_polygon_points=10**6)  # SAMKIT_LS_MAX_POLYGONS, no point limit
    body, expected = three_click_request(payloads, image_server, ref)
    outlines = cv2.findContours(expected.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    parts = sum(cv2.contourArea(cv2.approxPolyDP(c, 1.0, True)) >= 25 for c in outlines)
    assert parts > 2, "this click's mask has too few parts to test with"
    with caplog.at_level(logging.WARNING, logger="samkit.label_studio"):
        r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    assert len(regions_by_type(r.json()["results"][0]["result"])["polygonlabels"]) == 2
    assert any(f"a mask has {parts} polygon parts: kept the largest 2, dropped {parts - 2} (" in rec.getMessage()
               for rec in caplog.records), [rec.getMessage() for rec in caplog.records]


def test_several_rectangles_keep_their_labels(make_client, payloads, image_server, ref):
    """Two rectangles in one interactive request: a mask each, each with its own label."""
    client, _ = make_client()
    name, w, h = DOG
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_rect",
                            f"{image_server.url}/public/{name}", (w, h))
    body["label_config"] = CONFIG_ALL
    first = body["params"]["context"]["result"][0]
    first["value"].update(x=5.0, y=10.0, width=40.0, height=50.0, rectanglelabels=["Dog"])
    second = copy.deepcopy(first)
    second["id"] = "second"
    second["value"].update(x=55.0, y=20.0, width=35.0, height=60.0, rectanglelabels=["Object"])
    body["params"]["context"]["result"].append(second)
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    brushes = regions_by_type(r.json()["results"][0]["result"])["brushlabels"]
    assert [b["value"]["brushlabels"] for b in brushes] == [["Dog"], ["Object"]]
    for b, v in zip(brushes, (first["value"], second["value"])):
        box = np.array([v["x"] * w, v["y"] * h, (v["x"] + v["width"]) * w, (v["y"] + v["height"]) * h]) / 100
        expected, _ = ref(name, box=box)
        assert iou(brush_mask(b), expected) > 0.999



def test_rectangle_outside_the_image(make_client, payloads, image_server):
    """A rectangle wholly off the image: an interactive request says so (no mask of a clipped,
    flat box); a batch task with one skips it and keeps its other rectangle."""
    client, _ = make_client()
    name, w, h = DOG
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_rect",
                            f"{image_server.url}/public/{name}", (w, h))
    body["label_config"] = CONFIG_ALL
    body["params"]["context"]["result"][0]["value"].update(x=120.0, y=10.0, width=20.0, height=20.0)
    r = client.post("/predict", json=body)
    assert r.status_code == 422 and "outside the 800x534 image" in r.json()["error"], r.text

    batch = copy.deepcopy(payloads["ls_to_backend_predict_batch"]["body"])
    batch["label_config"] = CONFIG_ALL
    task = batch["tasks"][0]
    task["predictions"] = []
    task["data"]["image"] = f"{image_server.url}/public/{name}"
    rects = [{"x": 10, "y": 20, "width": 50, "height": 60, "rotation": 0, "rectanglelabels": ["Dog"]},
             {"x": 130, "y": 20, "width": 10, "height": 10, "rotation": 0, "rectanglelabels": ["Object"]}]
    task["annotations"] = [{"id": 7, "was_cancelled": False, "result": [
        {"from_name": "rect", "to_name": "image", "type": "rectanglelabels", "original_width": w,
         "original_height": h, "value": v} for v in rects]}]
    r = client.post("/predict", json=batch)
    assert r.status_code == 200, r.text
    brushes = regions_by_type(r.json()["results"][0]["result"])["brushlabels"]
    assert [b["value"]["brushlabels"] for b in brushes] == [["Dog"]]


def test_image_too_large_for_pillow_is_a_task_error(make_client, payloads, image_server, monkeypatch):
    """An image over Pillow's decompression-bomb limit: a readable error for that task (here the
    limit is lowered so that the 800x534 photo trips it), not an internal error."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # Pillow refuses above twice this
    client, _ = make_client()
    name, w, h = DOG
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1",
                            f"{image_server.url}/public/{name}", (w, h))
    r = client.post("/predict", json=body)
    assert r.status_code != 500 and "internal error" not in r.text, r.text
    assert "MAX_IMAGE_PIXELS" in r.text


def test_output_follows_the_config_and_setting(make_client, payloads, image_server):
    name, w, h = DOG
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1",
                            f"{image_server.url}/public/{name}", (w, h))
    body["label_config"] = body["label_config"].replace(
        '<BrushLabels name="brush" toName="image">\n    <Label value="Object" background="#FF0000"/>\n'
        '  </BrushLabels>', "")
    client, _ = make_client()
    types = {r["type"] for r in client.post("/predict", json=body).json()["results"][0]["result"]}
    assert types == {"polygonlabels"}
    client, _ = make_client(output="brush")
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1",
                            f"{image_server.url}/public/{name}", (w, h))
    types = {r["type"] for r in client.post("/predict", json=body).json()["results"][0]["result"]}
    assert types == {"brushlabels"}


def test_second_click_runs_only_the_decoder(make_client, payloads, image_server, monkeypatch):
    hashed = []
    image_key = samkit.Predictor.image_key
    monkeypatch.setattr(samkit.Predictor, "image_key", lambda self, image: hashed.append(1) or image_key(self, image))
    client, backend = make_client(fresh_cache=True)
    name, w, h = DOG
    url = f"{image_server.url}/public/{name}"
    first = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1", url, (w, h))
    assert client.post("/predict", json=first).status_code == 200
    assert backend.encoder_calls == 1
    t_first = backend.last_timings["embed_s"]
    for name_ in ("ls_to_backend_predict_interactive_kp3", "ls_to_backend_predict_interactive_rect"):
        r = client.post("/predict", json=interactive_body(payloads, name_, url, (w, h)))
        assert r.status_code == 200 and r.json()["results"][0]["result"]
    assert backend.encoder_calls == 1, "later clicks on the same image must not run the image encoder"
    assert backend.cache.hits >= 2
    assert len(hashed) == 1, "the same fetched image must not be hashed again on every click"
    assert backend.last_timings["embed_s"] < t_first / 5
    assert image_server.hits.get(f"/public/{name}", 0) >= 1
    stats = client.get("/stats").json()
    assert stats["encoder_calls"] == 1 and stats["cache"]["items"] == 1


def test_embeddings_on_disk_survive_a_restart(make_client, payloads, image_server, tmp_path):
    name, w, h = GROCERIES
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1",
                            f"{image_server.url}/public/{name}", (w, h))
    client, backend = make_client(fresh_cache=True, cache_dir=str(tmp_path))
    first = client.post("/predict", json=body).json()
    assert backend.encoder_calls == 1 and list(tmp_path.glob("*.pt"))
    client2, backend2 = make_client(fresh_cache=True, cache_dir=str(tmp_path))  # a new process, same disk
    second = client2.post("/predict", json=body).json()
    assert backend2.encoder_calls == 0
    strip = lambda res: [{k: v for k, v in r.items() if k != "id"} for r in res["results"][0]["result"]]  # noqa: E731
    assert strip(first) == strip(second)


def test_embeddings_on_disk_are_bounded(make_client, payloads, image_server, tmp_path):
    bodies = [interactive_body(payloads, "ls_to_backend_predict_interactive_kp1",
                               f"{image_server.url}/public/{name}", (w, h))
              for name, w, h in (GROCERIES, DOG)]
    # one embedding file is ~4 MiB: a 6 MiB bound keeps the latest only
    client, backend = make_client(fresh_cache=True, cache_dir=str(tmp_path), cache_dir_mb=6)
    for body in bodies:
        assert client.post("/predict", json=body).status_code == 200
    assert backend.encoder_calls == 2 and len(list(tmp_path.glob("*.pt"))) == 1
    client2, backend2 = make_client(fresh_cache=True, cache_dir=str(tmp_path), cache_dir_mb=6)
    client2.post("/predict", json=bodies[1])
    assert backend2.encoder_calls == 0  # the kept one is the dog's, the latest


def dog_task_with_rectangle(task: dict, image_url: str) -> dict:
    """A copy of a batch task (id 99) on the dog photo whose annotation holds one "Dog" rectangle
    at x 10-60 %, y 20-80 % (pixels 80-480, 106.8-427.2)."""
    task = copy.deepcopy(task)
    task["id"] = 99
    task["data"]["image"] = image_url
    rect = {"x": 10, "y": 20, "width": 50, "height": 60, "rotation": 0, "rectanglelabels": ["Dog"]}
    task["annotations"] = [{"id": 7, "was_cancelled": False, "result": [
        {"from_name": "rect", "to_name": "image", "type": "rectanglelabels", "original_width": 800,
         "original_height": 534, "value": rect}]}]
    return task


def test_batch_boxes_and_everything_one_result_per_task_in_order(make_client, payloads, image_server, images_dir,
                                                                   sam_model, ref):
    client, _ = make_client()
    body = copy.deepcopy(payloads["ls_to_backend_predict_batch"]["body"])
    body["label_config"] = CONFIG_ALL
    t0 = body["tasks"][0]
    t0["predictions"] = []  # a detector-free task: segment everything
    t0["data"]["image"] = f"{image_server.url}/public/{GROCERIES[0]}"
    t1 = dog_task_with_rectangle(t0, f"{image_server.url}/public/{DOG[0]}")
    t1["annotations"][0]["result"].append(
        {"from_name": "brush", "to_name": "image", "type": "brushlabels",
         "value": {"format": "rle", "rle": [0, 1, 2] * 1000, "brushlabels": ["Object"]}})
    body["tasks"] = [t0, t1]
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 2
    # task 0: segment everything; scores are the predicted IoUs
    everything = regions_by_type(res[0]["result"])
    assert 1 <= len(everything["brushlabels"]) <= 5
    for b in everything["brushlabels"]:
        assert brush_mask(b).shape == (534, 800) and brush_mask(b).any()
        assert 0.0 <= b["score"] <= 1.0
    gen = samkit.MaskGenerator(sam_model, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0,
                               min_mask_region_area=25)
    recs = sorted(gen.generate(samkit.load_image(images_dir / GROCERIES[0])), key=lambda x: -x["predicted_iou"])
    assert [b["score"] for b in everything["brushlabels"]] == [unit_score(x["predicted_iou"]) for x in recs[:5]]
    assert np.array_equal(brush_mask(everything["brushlabels"][0]), recs[0]["segmentation"])
    # task 1: a mask for its rectangle, with the rectangle's label
    boxed = regions_by_type(res[1]["result"])
    assert len(boxed["brushlabels"]) == 1 and boxed["brushlabels"][0]["value"]["brushlabels"] == ["Dog"]
    box = np.array([80, 106.8, 480, 427.2])
    expected, _ = ref(DOG[0], box=box, batch=True)
    assert np.array_equal(brush_mask(boxed["brushlabels"][0]), expected)
    assert all(p["value"]["polygonlabels"] == ["Dog"] for p in boxed["polygonlabels"])


def test_batch_boxes_only_refuses_a_task_without_rectangles_before_downloading(make_client, payloads, image_server):
    """SAMKIT_LS_BATCH=boxes: a task without rectangles gets the reason and no prediction; its
    image is not even downloaded (its URL would answer 404); a task with one gets its mask."""
    client, _ = make_client(batch="boxes")
    body = copy.deepcopy(payloads["ls_to_backend_predict_batch"]["body"])
    body["label_config"] = CONFIG_ALL
    bare = body["tasks"][0]
    bare["predictions"], bare["annotations"] = [], []
    bare["data"]["image"] = f"{image_server.url}/missing.jpg"
    boxed = dog_task_with_rectangle(bare, f"{image_server.url}/public/{DOG[0]}")
    body["tasks"] = [bare, boxed]
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert "result" not in first and "has no rectangles to segment and SAMKIT_LS_BATCH=boxes" in first["error"]
    assert len(regions_by_type(second["result"])["brushlabels"]) == 1


def test_bad_json_and_bad_shapes(make_client):
    client, _ = make_client()
    r = client.post("/predict", content=b'{"tasks": [ {"id": 1,', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/predict", json={"tasks": "nope", "label_config": CONFIG_ALL})
    assert r.status_code == 400 and "tasks" in r.json()["error"]
    r = client.post("/predict", content=b"")
    assert r.status_code == 400 and "empty" in r.json()["error"]
    r = client.post("/setup", content=b"[1, 2")
    assert r.status_code == 400
    assert client.get("/health").status_code == 200  # still alive


def test_task_without_image(make_client, payloads):
    client, _ = make_client()
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1", "x", (800, 534))
    body["tasks"][0]["data"] = {"text": "hello"}
    r = client.post("/predict", json=body)
    assert r.status_code == 422
    assert "no image under data.image" in r.json()["error"] and "text" in r.json()["error"]
    # batch: that task is skipped with the reason (no empty prediction), the others answered
    batch = copy.deepcopy(payloads["ls_to_backend_predict_batch"]["body"])
    batch["tasks"][0]["data"] = {}
    r = client.post("/predict", json=batch)
    assert r.status_code == 200
    entry = r.json()["results"][0]
    assert "result" not in entry and "no image" in entry["error"]


def test_image_404_and_auth_errors_are_readable(make_client, payloads, image_server):
    client, _ = make_client()
    for path, status, words in [
        ("/missing.jpg", 502, ["HTTP 404", "not found"]),
        ("/private/dog.jpg", 502, ["HTTP 401", "credentials"]),
        ("/text", 502, ["not an image", "login page"]),
    ]:
        body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1", image_server.url + path, (800, 534))
        r = client.post("/predict", json=body)
        assert r.status_code == status, r.text
        for w in words:
            assert w in r.json()["error"]
    # a Label Studio-relative path without any Label Studio URL configured or set up
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1", "/data/upload/1/x.png", (64, 48))
    body["project"] = "77.123"
    r = client.post("/predict", json=body)
    assert r.status_code == 502 and "LABEL_STUDIO_URL" in r.json()["error"]


def test_label_studio_host_needs_the_key(make_client, payloads, image_server):
    # The image lives on "Label Studio" (the image server plays it): without a key a clear 401 ...
    client, _ = make_client(label_studio_url=image_server.url)
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1", "/private/dog.jpg", (800, 534))
    body["project"] = "55.1"
    r = client.post("/predict", json=body)
    assert r.status_code == 502 and "LABEL_STUDIO_API_KEY" in r.json()["error"]
    # ... with a wrong key another one, with the legacy token it works.
    client, _ = make_client(label_studio_url=image_server.url, label_studio_api_key="f" * 40)
    r = client.post("/predict", json=body)
    assert r.status_code == 502 and "refused" in r.json()["error"]
    client, _ = make_client(label_studio_url=image_server.url, label_studio_api_key=image_server.token)
    r = client.post("/predict", json=body)
    assert r.status_code == 200 and r.json()["results"][0]["result"]


def test_loopback_names_match_label_studio(make_client, payloads, image_server, images_dir):
    """LABEL_STUDIO_URL=http://localhost:PORT and a task image http://127.0.0.1:PORT/... (or the
    other way round) are the same Label Studio: the key goes with the download."""
    localhost = image_server.url.replace("127.0.0.1", "localhost")
    for ls_url, image_url in ((localhost, image_server.url), (image_server.url, localhost)):
        client, _ = make_client(label_studio_url=ls_url, label_studio_api_key=image_server.token)
        body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1", f"{image_url}/private/dog.jpg",
                                (800, 534))
        body["project"] = "56.1"
        r = client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["result"]


def test_precompute_with_label_studio_unreachable_is_one_line(make_client, image_server, caplog):
    """Precompute against a LABEL_STUDIO_URL that gets no answer (a closed port), or where another
    server answers (a wrong port): the job fails with one line naming the URL and what to check."""
    from conftest import free_port

    def run_job(ls_url: str) -> dict:
        client, _ = make_client(label_studio_url=ls_url, label_studio_api_key="f" * 40)
        job = client.post("/precompute", json={"project": 1, "predictions": True}).json()
        # the job runs in the background; on a loaded machine it once took over 10 s to fail,
        # so the deadline is generous (a job that fails promptly ends the wait at once)
        deadline = time.monotonic() + 90
        while job["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
            job = client.get(f"/precompute/{job['id']}").json()
        assert job["state"] == "failed", job
        return job

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.INFO, logger="samkit.label_studio"):
        job = run_job(url)
    assert job["error"] == (f"cannot reach Label Studio at {url} (connection refused): check LABEL_STUDIO_URL "
                            "(scheme, host and port as the backend's machine sees it) and that Label Studio is running")
    assert not any(rec.exc_info for rec in caplog.records), "a traceback in the backend's log"
    assert any(job["error"] in rec.getMessage() for rec in caplog.records)
    job = run_job(image_server.url)  # an HTTP server, but not Label Studio
    assert job["error"] == (f"Label Studio at {image_server.url} answered HTTP 404 for project 1: check the project "
                            "id, and that LABEL_STUDIO_URL is Label Studio's address")


def test_precompute_reads_the_next_image_while_the_encoder_runs(make_client, image_server, monkeypatch):
    """A precompute job downloads and decodes the next task's image in the background while the
    encoder works on this one; a task whose image cannot be read is reported and the rest done."""
    import threading

    from samkit.predictor import Predictor

    client, backend = make_client(fresh_cache=True)
    names = ["dog.jpg", "groceries.jpg", "missing.jpg", "picture1.jpg"]
    urls = [f"{image_server.url}/public/{name}" for name in names]
    fetched = {url: threading.Event() for url in urls}
    fetchers = set()
    real_get = backend.fetcher.get

    def get(ref, source, task_id=None):
        fetchers.add(threading.current_thread().name)
        fetched[ref].set()
        return real_get(ref, source, task_id)

    monkeypatch.setattr(backend.fetcher, "get", get)
    real_set_image = Predictor.set_image
    overlapped = []

    def set_image(self, image):
        if threading.current_thread().name.startswith("precompute-"):
            # this image is dog (0), groceries (1) or picture1 (3): the next task's is on its way
            following = {0: 1, 1: 2}.get(len(overlapped))
            overlapped.append(following is None or fetched[urls[following]].wait(10))
        return real_set_image(self, image)

    monkeypatch.setattr(Predictor, "set_image", set_image)
    tasks = [{"id": i + 1, "data": {"image": url}} for i, url in enumerate(urls)]
    job = client.post("/precompute", json={"tasks": tasks, "label_config": CONFIG_ALL}).json()
    for _ in range(600):
        job = client.get(f"/precompute/{job['id']}").json()
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert job["state"] == "done" and job["done"] == 4 and job["computed"] == 3, job
    assert len(job["errors"]) == 1 and job["errors"][0].startswith("task 3: "), job["errors"]
    assert overlapped == [True, True, True]
    assert fetchers and all(name.startswith("samkit-prefetch") for name in fetchers)


def test_config_without_supported_tool(make_client, payloads, image_server):
    client, _ = make_client()
    config = ('<View><Image name="image" value="$image"/>'
              '<Choices name="c" toName="image"><Choice value="a"/></Choices></View>')
    r = client.post("/setup", json={**payloads["ls_to_backend_setup"]["body"], "schema": config})
    assert r.status_code == 422 and "BrushLabels" in r.json()["error"]
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1",
                            f"{image_server.url}/public/dog.jpg", (800, 534))
    body["label_config"] = config
    r = client.post("/predict", json=body)
    assert r.status_code == 422 and "PolygonLabels" in r.json()["error"]
    assert client.post("/validate", json={"config": config}).status_code == 422
    assert client.post("/validate", json={"config": CONFIG_ALL}).status_code == 200


def test_request_size_limit(make_client, payloads, image_server):
    client, _ = make_client(max_request_mb=0.05)
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1",
                            f"{image_server.url}/public/dog.jpg", (800, 534))
    body["tasks"][0]["annotations"][0]["result"].append(
        {"type": "brushlabels", "value": {"rle": list(range(20000))}})
    r = client.post("/predict", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "SAMKIT_LS_MAX_REQUEST_MB" in r.json()["error"]

    def chunks():  # no Content-Length: counted while streaming
        data = json.dumps(body).encode()
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]

    r = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_big_task_history_is_skipped_not_parsed(make_client, payloads, image_server):
    client, _ = make_client()
    body = interactive_body(payloads, "ls_to_backend_predict_interactive_kp1",
                            f"{image_server.url}/public/dog.jpg", (800, 534))
    huge = {"format": "rle", "rle": [255] * 300_000, "brushlabels": ["Object"]}
    body["tasks"][0]["annotations"] += [{"result": [{"type": "brushlabels", "from_name": "brush", "to_name": "image",
                                                      "value": huge}]}] * 10
    r = client.post("/predict", json=body)
    assert r.status_code == 200 and r.json()["results"][0]["result"]


def test_basic_auth(make_client, payloads):
    client, _ = make_client(basic_auth_user="ls", basic_auth_pass="s3cret")
    assert client.get("/health").status_code == 401
    assert client.post("/setup", json=payloads["ls_to_backend_setup"]["body"], auth=("ls", "wrong")).status_code == 401
    r = client.post("/setup", json=payloads["ls_to_backend_setup"]["body"], auth=("ls", "s3cret"))
    assert r.status_code == 200
    assert client.get("/health", auth=("ls", "s3cret")).json()["status"] == "UP"


def test_rotated_rectangles_become_the_box_around_them():
    from samkit.label_studio.backend import _rect_xyxy
    from samkit.label_studio.models import RegionValue

    # Label Studio rotates a rectangle about its top-left corner, in degrees
    v = RegionValue(x=50, y=10, width=20, height=10, rotation=90)
    x0, y0, x1, y1 = _rect_xyxy(v, 200, 100)  # 40x10 px, turned to point down and left
    assert (x0, y0, x1, y1) == pytest.approx((90.0, 10.0, 100.0, 50.0))
    assert _rect_xyxy(RegionValue(x=-5, y=90, width=20, height=20), 200, 100) == pytest.approx([0, 90, 30, 100])


def test_a_ragged_mask_comes_back_under_the_point_limit(make_client, payloads, image_server, ref, caplog):
    """Random weights' 3-click mask has hundreds of holes: by default its polygons are simplified
    until they have at most SAMKIT_LS_MAX_POLYGON_POINTS points together, and still cover the mask."""
    client, _ = make_client(max_polygon_points=1500)
    body, expected = three_click_request(payloads, image_server, ref)
    with caplog.at_level(logging.DEBUG, logger="samkit.label_studio"):
        r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    polygons = regions_by_type(r.json()["results"][0]["result"])["polygonlabels"]
    count = sum(len(p["value"]["points"]) for p in polygons)
    assert 3 <= count <= 1500
    filled = polygon_mask(polygons)
    assert (filled & expected).sum() >= 0.9 * expected.sum()  # the object is there, its holes filled
    limit = [rec for rec in caplog.records if "SAMKIT_LS_MAX_POLYGON_POINTS" in rec.getMessage()]
    assert limit and all(rec.levelno == logging.DEBUG for rec in limit)  # the log, not a warning per click
