"""The training protocol against a real Label Studio 1.23.2: annotate, press Start Training (Label
Studio posts START_TRAINING to /webhook, with no annotation), the backend fetches the project's
annotations through the API, fine-tunes in the background while it keeps answering clicks, then
answers that project with the tuned decoder and a new model_version; other projects keep the
base model. Also: Label Studio's brush RLE decodes exactly as its own SDK decodes it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from ls_helpers import CONFIG_ALL, brush_mask, iou
from PIL import Image

import samkit
from samkit.finetune import decode_mask, read_coco
from samkit.label_studio.regions import brush_rle
from samkit.label_studio.training import ProjectTrainer, decode_brush_rle, task_objects

BASE_VERSION = "samkit-0.1.0-mobile_sam_random"
SIDE = 256


def test_brush_rle_decodes_as_the_sdk_does(kampala_teacher):
    from label_studio_sdk.converter.brush import decode_rle

    record = read_coco(kampala_teacher.coco)[0]
    for obj in record.objects[:3]:
        mask = decode_mask(obj)
        rle = brush_rle(mask)
        ours = decode_brush_rle(rle, *mask.shape)
        assert np.array_equal(ours, mask)
        assert np.array_equal(ours, decode_rle(rle).reshape(*mask.shape, 4)[..., 3] > 0)
    ragged = np.random.default_rng(0).random((37, 53)) > 0.5  # many short runs
    assert np.array_equal(decode_brush_rle(brush_rle(ragged), 37, 53), ragged)
    with pytest.raises(ValueError, match="holds 7844 values, not 10x10x4"):
        decode_brush_rle(brush_rle(ragged), 10, 10)


def brush_region(mask: np.ndarray) -> dict:
    return {"from_name": "brush", "to_name": "image", "type": "brushlabels", "original_width": SIDE,
            "original_height": SIDE, "image_rotation": 0,
            "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": ["Object"]}}


def polygon_region(mask: np.ndarray) -> dict:
    outline = max(samkit.mask_utils.mask_to_polygons(mask), key=len)
    points = ((outline + 0.5) / SIDE * 100).tolist()
    return {"from_name": "poly", "to_name": "image", "type": "polygonlabels", "original_width": SIDE,
            "original_height": SIDE, "image_rotation": 0, "value": {"points": points, "polygonlabels": ["Object"]}}


def keypoint(x: float, y: float) -> dict:
    return {"original_width": SIDE, "original_height": SIDE, "image_rotation": 0, "id": "kp1", "from_name": "kp",
            "to_name": "image", "type": "keypointlabels", "origin": "manual", "is_positive": True,
            "value": {"x": x / SIDE * 100, "y": y / SIDE * 100, "width": 0.5, "keypointlabels": ["Object"]}}


@pytest.fixture()
def annotated_project(label_studio, kampala_teacher):
    """Three Kampala chips uploaded, annotated with the teacher's masks: brushes on two, polygons
    on the third."""
    ls = label_studio
    pid = ls.create_project("samkit training", config=CONFIG_ALL, show_collab_predictions=False)
    records = read_coco(kampala_teacher.coco)[:3]
    tasks = []
    for index, record in enumerate(records):
        tid = ls.upload(pid, Path(record.image))
        masks = [decode_mask(obj) for obj in record.objects[:6]]
        regions = [polygon_region(m) if index == 2 else brush_region(m) for m in masks]
        ls.ok("POST", f"/api/tasks/{tid}/annotations/", json={"result": regions})
        tasks.append((tid, record, masks))
    return pid, tasks


def test_start_training_then_the_project_gets_the_tuned_model(label_studio, annotated_project, serve_backend,
                                                             monkeypatch, tmp_path):
    monkeypatch.setenv("SAMKIT_LS_TRAIN_EPOCHS", "2")
    monkeypatch.setenv("SAMKIT_LS_TRAIN_LR", "1e-3")
    monkeypatch.setenv("SAMKIT_LS_TRAIN_DIR", str(tmp_path / "training"))
    ls = label_studio
    pid, tasks = annotated_project
    url, backend = serve_backend(label_studio_url=ls.url, label_studio_api_key=ls.token)
    ml = ls.connect(pid, url)

    # hold the run at its start, so that a click is certainly answered while it is going
    reached, release = threading.Event(), threading.Event()
    original = ProjectTrainer._fine_tune

    def held(self, job, records):
        reached.set()
        release.wait(600)
        return original(self, job, records)

    monkeypatch.setattr(ProjectTrainer, "_fine_tune", held)
    ls.ok("POST", f"/api/ml/{ml}/train")  # the Start Training button: Label Studio posts START_TRAINING
    job = backend.trainer.jobs[str(pid)]
    assert job.state == "running" and job.reason == "Start Training"
    assert reached.wait(600), job.error  # the annotations are fetched; the training is about to start

    tid, record, masks = tasks[0]
    ys, xs = np.nonzero(masks[0])
    point = (float(xs.mean()), float(ys.mean()))
    context = {"result": [keypoint(*point)]}
    during = ls.ok("POST", f"/api/ml/{ml}/interactive-annotating", json={"task": tid, "context": context})["data"]
    assert during["model_version"] == BASE_VERSION and job.state == "running"
    # the annotations came through the export API: 3 tasks, their brushes and polygons
    assert job.images == 3 and job.objects == sum(len(m) for _, _, m in tasks)
    release.set()
    assert backend.trainer.wait(timeout=1800)
    assert job.state == "done", job.error
    tuned_version = f"{BASE_VERSION}-p{pid}-ft1"
    assert job.model_version == tuned_version and job.checkpoint

    status = requests.get(f"{url}/training", timeout=10).json()
    assert status["models"] == {str(pid): tuned_version}
    assert status["jobs"][0]["scores"]["best_epoch"] == 2  # no validation with 3 tasks: the last epoch
    setup = requests.post(f"{url}/setup", json={"project": f"{pid}.1700000000", "schema": CONFIG_ALL},
                          timeout=30).json()
    assert setup["model_version"] == tuned_version

    # the next click comes from the tuned decoder
    after = ls.ok("POST", f"/api/ml/{ml}/interactive-annotating", json={"task": tid, "context": context})["data"]
    assert after["model_version"] == tuned_version
    answered = brush_mask(next(r for r in after["result"] if r["type"] == "brushlabels"))
    image = np.asarray(Image.open(record.image).convert("RGB"))

    def click_mask(model):
        predictor = samkit.Predictor(model)
        predictor.set_image(image)
        out, scores, _ = predictor.predict(point_coords=np.array([point]), point_labels=np.array([1]))
        return out[int(np.argmax(scores))]

    tuned_mask = click_mask(samkit.load_model(job.checkpoint, device="cpu"))
    base_mask = click_mask(backend.base_model)
    assert iou(answered, tuned_mask) > 0.99
    assert (tuned_mask != base_mask).sum() > 0, "the tuned decoder answers differently from the base one"
    # another project keeps the base model
    other = ls.create_project("samkit other", config=CONFIG_ALL)
    setup = requests.post(f"{url}/setup", json={"project": f"{other}.1700000000", "schema": CONFIG_ALL},
                          timeout=30).json()
    assert setup["model_version"] == BASE_VERSION


def test_training_every_n_annotations(make_client, monkeypatch, tmp_path, payloads):
    """With SAMKIT_LS_TRAIN_EVERY=2 the second ANNOTATION_CREATED of a project starts a run; other
    events are answered 200 and start nothing. (No Label Studio here: the run fails to export,
    and says so in /training.)"""
    monkeypatch.setenv("SAMKIT_LS_TRAIN_EVERY", "2")
    monkeypatch.setenv("SAMKIT_LS_TRAIN_DIR", str(tmp_path))
    client, backend = make_client()
    event = payloads["ls_to_backend_webhook_annotation_created"]["body"]
    first = client.post("/webhook", json=event)
    assert first.status_code == 200 and not backend.trainer.jobs
    second = client.post("/webhook", json=event)
    assert second.status_code == 201 and second.json()["status"] == "ok"
    assert backend.trainer.wait(timeout=60)
    job = backend.trainer.jobs[str(event["project"]["id"])]
    assert job.state == "failed" and "LABEL_STUDIO_URL" in job.error
    other = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 5}})
    assert other.status_code == 200 and other.json()["action"] == "PROJECT_UPDATED"
    assert time.time() >= job.started


def test_json_export_file_reads_and_trains(label_studio, annotated_project, kampala_teacher, mobile_sam_checkpoint,
                                           tmp_path):
    """A real project's Export > JSON file: read_export finds the uploaded images (by their name
    without Label Studio's upload prefix) and gives the same objects as the API path (brushes
    exactly, polygons closely); `samkit label-studio finetune` trains on it; a missing image is one
    error naming the task."""
    import json

    from samkit.cli import main
    from samkit.label_studio.training import read_export

    ls = label_studio
    pid, tasks = annotated_project
    exported = ls.ok("GET", f"/api/projects/{pid}/export?exportType=JSON")
    export = tmp_path / "export.json"
    export.write_text(json.dumps(exported))
    refs = [t["data"]["image"] for t in exported]
    assert all(r.startswith("/data/upload/") for r in refs)
    assert all(Path(r).name != Path(rec.image).name for r, (_, rec, _) in zip(refs, tasks))  # prefixed on upload
    images = Path(tasks[0][1].image).parent
    records = read_export(export, images)
    assert len(records) == 3
    by_name = {Path(r.image).name: r for r in records}
    for index, (tid, record, masks) in enumerate(tasks):
        read = by_name[Path(record.image).name]
        assert len(read.objects) == len(masks) and read.size == masks[0].shape
        # what the Start Training path reads of the same task over the API
        api = task_objects(ls.ok("GET", f"/api/tasks/{tid}"), "image", "api")
        for obj, mask, api_obj in zip(read.objects, masks, api):
            ours = decode_mask(obj)
            assert np.array_equal(ours, decode_mask(api_obj))
            if index < 2:  # brushes: the very masks that were annotated
                assert np.array_equal(ours, mask)
            else:  # polygons: the mask's largest outline, filled
                assert ours.any() and (ours & mask).sum() > 0.5 * ours.sum()
        assert read.load().shape == (*masks[0].shape, 3)

    output = tmp_path / "tuned.pt"
    code = main(["label-studio", "finetune", str(export), "--images", str(images), "-o", str(output),
                 "--model", str(mobile_sam_checkpoint), "--epochs", "1", "--val-fraction", "0", "--quiet",
                 "--prompt-iterations", "1"])
    assert code == 0 and output.is_file() and output.with_suffix(".json").is_file()
    assert samkit.load_model(output, device="cpu") is not None

    with pytest.raises(samkit.DatasetError, match=r"export.json: task \d+: image '/data/upload/.*' not found"):
        read_export(export, tmp_path / "elsewhere")
    with pytest.raises(samkit.DatasetError, match="no object has class Car"):
        read_export(export, images, classes=["Car"])
