"""Against a real Label Studio 1.23.2 and the backend process started as users start it."""

from __future__ import annotations

import re
import subprocess
import threading
import time

import numpy as np
import pytest
import requests
from samkit.label_studio.regions import unit_score
from ls_helpers import brush_mask, iou, polygon_mask, samkit_command

DOG_W, DOG_H = 800, 534


def kp(x: float, y: float, positive: bool = True, label: str = "Object") -> dict:
    return {"original_width": DOG_W, "original_height": DOG_H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": 0.26, "labels": [label], "keypointlabels": [label]},
            "is_positive": positive, "id": f"kp{x:.0f}{y:.0f}", "from_name": "kp", "to_name": "image",
            "type": "keypointlabels", "origin": "manual"}


def rect(x, y, w, h, label="Object") -> dict:
    return {"original_width": DOG_W, "original_height": DOG_H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
            "id": "r1", "from_name": "rect", "to_name": "image", "type": "rectanglelabels", "origin": "manual"}


def split(result: list[dict]) -> tuple[list[dict], list[dict]]:
    return ([r for r in result if r["type"] == "brushlabels"], [r for r in result if r["type"] == "polygonlabels"])


@pytest.fixture(scope="module")
def interactive_project(label_studio, backend_server, images_dir):
    ls = label_studio
    pid = ls.create_project("samkit interactive", show_collab_predictions=False)
    tid = ls.upload(pid, images_dir / "dog.jpg")
    assert ls.tasks(pid)[0]["data"]["image"].startswith("/data/upload/")
    ml = ls.connect(pid, backend_server.url)
    return pid, tid, ml


def test_backend_connects_as_interactive(label_studio, interactive_project):
    _, _, ml = interactive_project
    info = label_studio.ok("GET", f"/api/ml/{ml}")
    assert info["state"] == "CO" and info["is_interactive"] is True and not info["error_message"]
    assert info["model_version"] == "samkit-0.1.0-mobile_sam_random"
    versions = label_studio.ok("GET", f"/api/ml/{ml}/versions")
    assert versions["versions"] == ["samkit-0.1.0-mobile_sam_random"]


def test_interactive_annotating_keypoints_and_rectangle(label_studio, backend_server, interactive_project, ref):
    _, tid, ml = interactive_project
    before = backend_server.stats()["encoder_calls"]

    def click(context):
        t0 = time.perf_counter()
        out = label_studio.ok("POST", f"/api/ml/{ml}/interactive-annotating", json={"task": tid, "context": context})
        assert "errors" not in out, out
        return out["data"], time.perf_counter() - t0

    # one positive keypoint (the image is fetched from /data/upload with the token /setup sent)
    data, first_s = click({"result": [kp(30, 60, label="Dog")]})
    brushes, polys = split(data["result"])
    assert len(brushes) == 1 and polys
    b = brushes[0]
    assert (b["original_width"], b["original_height"]) == (DOG_W, DOG_H)
    assert b["value"]["brushlabels"] == ["Dog"] and all(p["value"]["polygonlabels"] == ["Dog"] for p in polys)
    mask = brush_mask(b)
    assert mask.shape == (DOG_H, DOG_W)
    expected, score = ref("dog.jpg", np.array([[240.0, 320.4]]), np.array([1]), multimask=True)
    assert iou(mask, expected) > 0.99 and b["score"] == pytest.approx(unit_score(score), abs=1e-3)
    assert iou(polygon_mask(polys), mask) > 0.85
    assert data["model_version"] == "samkit-0.1.0-mobile_sam_random"

    # all pending keypoints are re-sent, one of them negative (Alt+click)
    data, second_s = click({"result": [kp(30, 60, label="Dog"), kp(80, 20, False, "Dog"), kp(35, 75, label="Dog")]})
    brushes, _ = split(data["result"])
    expected, _ = ref("dog.jpg", np.array([[240.0, 320.4], [640.0, 106.8], [280.0, 400.5]]), np.array([1, 0, 1]))
    assert iou(brush_mask(brushes[0]), expected) > 0.99

    # a smart rectangle
    data, third_s = click({"result": [rect(10, 20, 50, 60)]})
    brushes, polys = split(data["result"])
    expected, _ = ref("dog.jpg", box=np.array([80.0, 106.8, 480.0, 427.2]))
    assert iou(brush_mask(brushes[0]), expected) > 0.99
    assert brushes[0]["value"]["brushlabels"] == ["Object"]

    stats = backend_server.stats()
    assert stats["encoder_calls"] - before <= 1, "one embedding per image, whatever the number of clicks"
    print(f"\ninteractive via Label Studio: first click {first_s:.2f} s, later clicks {second_s:.2f} s / "
          f"{third_s:.2f} s; backend timings of the last: {stats['last_timings']}")


def test_retrieve_predictions_for_a_project(label_studio, backend_server, images_dir):
    ls = label_studio
    pid = ls.create_project("samkit batch")
    t_plain = ls.upload(pid, images_dir / "groceries.jpg")
    t_boxed = ls.upload(pid, images_dir / "picture1.jpg")
    ls.ok("POST", f"/api/tasks/{t_boxed}/annotations/", json={"result": [
        {"from_name": "rect", "to_name": "image", "type": "rectanglelabels", "original_width": 769,
         "original_height": 770, "value": {"x": 20, "y": 10, "width": 40, "height": 50, "rotation": 0,
                                            "rectanglelabels": ["Dog"]}}]})
    ls.connect(pid, backend_server.url, interactive=False)
    out = ls.ok("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                json={"selectedItems": {"all": True, "excluded": []}})
    assert out.get("processed_items") == 2, out

    def predictions(task):
        return ls.ok("GET", "/api/predictions/", params={"task": task})

    plain = predictions(t_plain)
    assert len(plain) == 1 and plain[0]["model_version"] == "samkit-0.1.0-mobile_sam_random"
    brushes, polys = split(plain[0]["result"])
    assert 1 <= len(brushes) <= 3 and polys
    for b in brushes:
        m = brush_mask(b)
        assert m.shape == (534, 800) and m.any()
    assert plain[0]["score"] == pytest.approx(np.mean([b["score"] for b in brushes]), abs=1e-3)

    boxed = predictions(t_boxed)
    brushes, polys = split(boxed[0]["result"])
    assert len(brushes) == 1 and brushes[0]["value"]["brushlabels"] == ["Dog"]
    assert brush_mask(brushes[0]).shape == (770, 769)

    # Asking again does not duplicate: Label Studio skips tasks holding this model_version.
    ls.ok("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
          json={"selectedItems": {"all": True, "excluded": []}})
    assert len(predictions(t_plain)) == 1


def test_a_missing_image_leaves_no_empty_prediction(label_studio, backend_server):
    ls = label_studio
    pid = ls.create_project("samkit broken image")
    ls.import_tasks(pid, [{"image": "/data/upload/999/does-not-exist.jpg"}])
    tid = ls.tasks(pid)[0]["id"]
    ml = ls.connect(pid, backend_server.url)
    ls.ok("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
          json={"selectedItems": {"all": True, "excluded": []}})
    assert ls.ok("GET", "/api/predictions/", params={"task": tid}) == []  # skipped, so a retry can work later
    out = ls.ok("POST", f"/api/ml/{ml}/interactive-annotating", json={"task": tid, "context": {"result": [kp(50, 50)]}})
    assert "data" not in out and out["errors"]  # an error, not an empty suggestion
    log = backend_server.log.read_text()
    # (Label Studio 1.23.2 answers 500, not 404, for a missing upload)
    assert "could not download the image" in log and "/data/upload/999/does-not-exist.jpg: HTTP" in log


@pytest.fixture(scope="module")
def personal_access_token(label_studio) -> str:
    r = label_studio.api("POST", "/api/token/")
    if r.status_code == 201 or r.status_code == 200:
        return r.json()["token"]
    raise AssertionError(f"could not create a personal access token: {r.status_code} {r.text[:300]}")


def test_local_files_through_label_studio_with_a_personal_access_token(label_studio, personal_access_token,
                                                                       make_client, shared_dir, ref):
    ls = label_studio
    pid = ls.create_project("samkit local files")
    ls.ok("POST", "/api/storages/localfiles", json={"project": pid, "title": "shared images",
                                                    "path": str(shared_dir / "data" / "images"),
                                                    "use_blob_urls": True})
    ls.import_tasks(pid, [{"image": "/data/local-files/?d=images/dog.jpg"}])
    task = ls.tasks(pid)[0]
    client, backend = make_client(label_studio_url=ls.url, label_studio_api_key=personal_access_token)
    body = {"tasks": [task], "project": f"{pid}.1",
            "label_config": ls.ok("GET", f"/api/projects/{pid}")["label_config"],
            "params": {"login": None, "password": None, "context": {"result": [kp(30, 60)]}}}
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    assert backend.fetcher.tokens.refreshes == 1 and backend.fetcher.downloads == 1
    brushes, _ = split(r.json()["results"][0]["result"])
    expected, _ = ref("dog.jpg", np.array([[240.0, 320.4]]), np.array([1]), multimask=True)
    assert np.array_equal(brush_mask(brushes[0]), expected)
    # the same with no key: Label Studio answers 401 and the message says what to set
    client, _ = make_client(label_studio_url=ls.url)
    r = client.post("/predict", json=body)
    assert r.status_code == 502 and "LABEL_STUDIO_API_KEY" in r.json()["error"]


def test_precompute_a_project_then_clicks_need_no_encoder(label_studio, backend_server, images_dir):
    ls = label_studio
    pid = ls.create_project("samkit precompute", show_collab_predictions=False)
    t1 = ls.upload(pid, images_dir / "bus.jpg")
    ls.upload(pid, images_dir / "picture2.jpg")
    ml = ls.connect(pid, backend_server.url)  # /setup gives the backend Label Studio's URL and token
    before = backend_server.stats()["encoder_calls"]
    proc = subprocess.run([*samkit_command(), "label-studio", "precompute", "--project", str(pid),
                           "--backend", backend_server.url], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2/2 images, 2 computed" in proc.stdout
    assert backend_server.stats()["encoder_calls"] == before + 2
    out = ls.ok("POST", f"/api/ml/{ml}/interactive-annotating",
                json={"task": t1, "context": {"result": [dict(kp(50, 50), original_width=810, original_height=1080)]}})
    assert out["data"]["result"]
    assert backend_server.stats()["encoder_calls"] == before + 2


def test_prelabel_a_project_stores_predictions_in_label_studio(label_studio, backend_server, images_dir):
    ls = label_studio
    pid = ls.create_project("samkit prelabel")
    t1 = ls.upload(pid, images_dir / "dog.jpg")
    t2 = ls.upload(pid, images_dir / "groceries.jpg")
    ls.connect(pid, backend_server.url, interactive=False)
    cmd = [*samkit_command(), "label-studio", "precompute", "--project", str(pid), "--predictions",
           "--backend", backend_server.url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2/2 images" in proc.stdout and "2 predictions stored, 0 skipped" in proc.stdout
    for task, shape in ((t1, (534, 800)), (t2, (534, 800))):
        preds = ls.ok("GET", "/api/predictions/", params={"task": task})
        assert len(preds) == 1 and preds[0]["model_version"] == "samkit-0.1.0-mobile_sam_random"
        brushes, _ = split(preds[0]["result"])
        assert brushes and brush_mask(brushes[0]).shape == shape
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # again: nothing to do
    assert proc.returncode == 0 and "0 predictions stored, 2 skipped" in proc.stdout, proc.stdout + proc.stderr
    assert len(ls.ok("GET", "/api/predictions/", params={"task": t1})) == 1


def test_sixteen_concurrent_predicts_and_health_stays_fast(backend_server, image_server, ref, payloads):
    import copy

    points = [(20 + 7 * i, 30 + 4 * i) for i in range(8)]
    jobs = []
    # two images no other test sends to this backend process
    for name, (w, h) in (("dogs.jpg", (1072, 603)), ("truck.jpg", (1800, 1200))):
        for x, y in points:
            body = copy.deepcopy(payloads["ls_to_backend_predict_interactive_kp1"]["body"])
            body["tasks"][0]["data"]["image"] = f"{image_server.url}/public/{name}"
            c = body["params"]["context"]["result"][0]
            c["value"]["x"], c["value"]["y"], c["original_width"], c["original_height"] = x, y, w, h
            jobs.append((name, w, h, x, y, body))
    before = backend_server.stats()["encoder_calls"]
    results: dict[int, requests.Response] = {}
    health_ms: list[float] = []
    start = threading.Barrier(len(jobs) + 1)

    def run(i, body):
        start.wait()
        results[i] = requests.post(f"{backend_server.url}/predict", json=body, timeout=300)

    threads = [threading.Thread(target=run, args=(i, j[-1])) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    start.wait()
    while any(t.is_alive() for t in threads):
        t0 = time.perf_counter()
        assert requests.get(f"{backend_server.url}/health", timeout=5).status_code == 200
        health_ms.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.2)
    for t in threads:
        t.join()
    for i, (name, w, h, x, y, _) in enumerate(jobs):
        r = results[i]
        assert r.status_code == 200, r.text
        brushes, _ = split(r.json()["results"][0]["result"])
        expected, score = ref(name, np.array([[x / 100 * w, y / 100 * h]]), np.array([1]), multimask=True)
        assert iou(brush_mask(brushes[0]), expected) > 0.99, f"request {i} got another request's mask"
        assert brushes[0]["score"] == pytest.approx(unit_score(score), abs=1e-3)
    assert backend_server.stats()["encoder_calls"] - before == 2, "two images: two encoder runs, not sixteen"
    assert health_ms and max(health_ms) < 1000, f"/health took up to {max(health_ms):.0f} ms during predictions"
    print(f"\n/health during 16 concurrent predictions: max {max(health_ms):.0f} ms over {len(health_ms)} calls")


def test_precompute_progress_without_a_terminal_is_plain_lines(label_studio, backend_server, images_dir):
    """Output to a file or a CI log (no terminal): whole lines now and then, no carriage returns
    redrawing one line."""
    ls = label_studio
    pid = ls.create_project("samkit precompute log", show_collab_predictions=False)
    for name in ("dog.jpg", "groceries.jpg", "picture1.jpg"):
        ls.upload(pid, images_dir / name)
    ls.connect(pid, backend_server.url)
    proc = subprocess.run([*samkit_command(), "label-studio", "precompute", "--project", str(pid),
                           "--backend", backend_server.url], capture_output=True, timeout=300)  # bytes: \r kept
    stdout = proc.stdout.decode()
    assert proc.returncode == 0, stdout + proc.stderr.decode()
    assert "\r" not in stdout, stdout
    lines = stdout.split("\n")[:-1]
    assert lines[0].startswith("precompute job ") and lines[-1].startswith("3/3 images, ")
    assert len(lines) == len(set(lines)), "the same progress line twice"
    assert all(re.fullmatch(r"\d/3 images, \d computed", line) for line in lines[1:]), lines
