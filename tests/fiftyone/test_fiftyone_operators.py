"""The operators run from Python (immediately) and delegated, on the shared photos, with the
seeded MobileSAM; results checked against samkit's own predictor and mask generator."""

from __future__ import annotations

import signal
import subprocess
import threading
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fiftyone as fo
import fiftyone.core.labels as fol
import fiftyone.operators as foo
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState

import samkit
from samkit.fiftyone import segment_everything
from samkit.fiftyone.segmenter import confidence_of

from fo_checks import BOXES, check_box_relative_mask, check_tight, image_size, iou

EVERYTHING = "@samkit/fiftyone/segment_everything"
PROMPTS = "@samkit/fiftyone/segment_prompts"
# Small grid and no filtering: the seeded random weights score every mask low, and the suite
# must stay fast on two CPU cores. box_nms_thresh=1 keeps all 16 masks, so max_masks bites.
SMALL_EVERYTHING = dict(points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                        box_nms_thresh=1.0, max_masks=5)
WORKER = (
    "import sys\n"
    "from fiftyone.operators.delegated import DelegatedOperationService\n"
    "DelegatedOperationService().execute_queued_operations(dataset_name=sys.argv[1], log=True)\n"
)


def run_worker(dataset, env, timeout=600):
    proc = subprocess.run([sys.executable, "-c", WORKER, dataset.name], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def everything_records(model, path, **options):
    generator = samkit.MaskGenerator(model, **options)
    records = generator.generate(samkit.load_image(path))
    return sorted(records, key=lambda r: r["predicted_iou"], reverse=True)


def test_segment_everything_immediate(make_dataset, photos, checkpoint):
    files = [photos["dog.jpg"], photos["picture1.jpg"]]
    dataset = make_dataset(files)
    params = dict(SMALL_EVERYTHING, model=checkpoint, output_field="sam")
    result = foo.execute_operator(EVERYTHING, ctx={"dataset": dataset, "params": params})
    summary = result.result
    assert summary["processed"] == 2 and summary["failed"] == 0 and summary["skipped"] == 0
    assert summary["masks"] == 10

    options = {k: v for k, v in SMALL_EVERYTHING.items() if k != "max_masks"}
    records = everything_records(samkit.load_model(checkpoint), files[0], **options)
    assert len(records) > 5  # so max_masks=5 really cut the list

    for sample in dataset:
        width, height = image_size(sample.filepath)
        dets = sample["sam"].detections
        assert len(dets) == 5
        ious = [d["predicted_iou"] for d in dets]
        assert ious == sorted(ious, reverse=True)
        for det in dets:
            full = check_tight(det, width, height)
            assert det.confidence == confidence_of(det["predicted_iou"])
            assert 0.0 <= det["stability_score"] <= 1.0
            assert det["area"] == int(full.sum())
        if sample.filepath == files[0]:
            for det, record in zip(dets, records[:5]):
                assert det["predicted_iou"] == pytest.approx(record["predicted_iou"], abs=1e-5)
                assert det["stability_score"] == pytest.approx(record["stability_score"], abs=1e-5)
                assert iou(check_box_relative_mask(det, width, height), record["segmentation"]) > 0.999

    # the attributes are declared, so the App can filter on them
    schema = dataset.get_field_schema(flat=True)
    assert {"sam.detections.predicted_iou", "sam.detections.stability_score", "sam.detections.area"} <= set(schema)


def test_segment_everything_delegated_with_worker_secrets(make_dataset, photos, checkpoint, fiftyone_env, tmp_path):
    """Queued from here (no SAMKIT_CHECKPOINT in this process), run by a worker whose
    environment names the checkpoint: the model comes from the worker's secrets. A second
    operation with a bad model path fails alone, with the reason, and writes nothing."""
    files = [photos["groceries.jpg"], photos["dogs.jpg"]]
    dataset = make_dataset(files)
    bad_params = dict(SMALL_EVERYTHING, output_field="sam_bad", model=str(tmp_path / "nope.pt"))
    bad = foo.execute_operator(EVERYTHING, ctx={"dataset": dataset, "params": bad_params, "request_delegation": True})
    params = dict(SMALL_EVERYTHING, output_field="sam_delegated", model="")
    queued = foo.execute_operator(EVERYTHING, ctx={"dataset": dataset, "params": params, "request_delegation": True})
    assert queued.delegated and bad.delegated
    service = DelegatedOperationService()
    assert service.get(queued.result["id"]).run_state == ExecutionRunState.QUEUED
    assert not dataset.has_field("sam_delegated")

    run_worker(dataset, fiftyone_env(SAMKIT_CHECKPOINT=checkpoint))

    failed = service.get(bad.result["id"])
    assert failed.run_state == ExecutionRunState.FAILED and "nope.pt" in str(failed.result.error)
    doc = service.get(queued.result["id"])
    assert doc.run_state == ExecutionRunState.COMPLETED, doc.result
    summary = doc.result.result
    assert summary["processed"] == 2 and summary["masks"] == 10 and summary["failed"] == 0
    assert doc.status is not None and doc.status.progress == pytest.approx(1.0)  # ctx.set_progress reached the DB
    dataset.reload()
    assert not dataset.has_field("sam_bad")
    for sample in dataset:
        width, height = image_size(sample.filepath)
        assert len(sample["sam_delegated"].detections) == 5
        for det in sample["sam_delegated"].detections:
            check_tight(det, width, height)


def _check_prompt_masks(sample, model_predictor, field="gt_sam"):
    width, height = image_size(sample.filepath)
    model_predictor.set_image(sample.filepath)
    prompts = sample["gt"].detections
    dets = sample[field].detections
    assert len(dets) == len(prompts)
    for det, prompt in zip(dets, prompts):
        assert det["prompt_id"] == prompt.id and det.id != prompt.id
        assert det.label == prompt.label and det["source"] == "hand" and det["iscrowd"] is False
        assert det["prompt_confidence"] == 0.9
        full = check_tight(det, width, height)
        x, y, w, h = prompt.bounding_box
        box = np.array([x * width, y * height, (x + w) * width, (y + h) * height])
        masks, scores, _ = model_predictor.predict(box=box, multimask_output=False)
        assert det["predicted_iou"] == pytest.approx(float(scores[0]), abs=1e-4)
        assert det.confidence == confidence_of(det["predicted_iou"])  # clamped: random weights score some < 0
        assert iou(full, masks[0]) > 0.999
        assert det["area"] == int(full.sum())


def test_segment_prompts_boxes_new_field_all_photos_with_delegated_launch(make_dataset, photos, checkpoint,
                                                                         fiftyone_env):
    """All shared photos, box prompts, scheduled and run by `fiftyone delegated launch`."""
    dataset = make_dataset(sorted(photos.values()), boxes=True)
    params = {"prompt_field": "gt", "output_field": "gt_sam", "batch_size": 1}
    queued = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params, "request_delegation": True})
    op_id = queued.result["id"]
    launcher = Path(sys.executable).with_name("fiftyone")
    service = DelegatedOperationService()
    worker = subprocess.Popen([str(launcher), "delegated", "launch"], env=fiftyone_env(SAMKIT_CHECKPOINT=checkpoint),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while service.get(op_id).run_state not in (ExecutionRunState.COMPLETED, ExecutionRunState.FAILED):
            assert worker.poll() is None, worker.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "delegated operation did not finish"
            time.sleep(1)
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
    doc = service.get(op_id)
    assert doc.run_state == ExecutionRunState.COMPLETED, doc.result
    assert doc.result.result["processed"] == len(photos)
    assert doc.result.result["masks"] == sum(len(v) for v in BOXES.values())

    dataset.reload()
    predictor = samkit.Predictor(samkit.load_model(checkpoint))
    checked = {photos[name] for name in ("truck.jpg", "bus.jpg", "dogs.jpg")}  # wide, tall, two boxes
    for sample in dataset:
        if sample.filepath in checked:
            _check_prompt_masks(sample, predictor)
        else:
            width, height = image_size(sample.filepath)
            assert [d.label for d in sample.gt_sam.detections] == [d.label for d in sample.gt.detections]
            for det in sample.gt_sam.detections:
                check_tight(det, width, height)


def test_segment_prompts_in_place_keeps_labels(make_dataset, photos, checkpoint):
    dataset = make_dataset([photos["dogs.jpg"], photos["bus.jpg"]], boxes=True)
    before = {s.id: [d.to_dict() for d in s.gt.detections] for s in dataset}
    params = {"prompt_field": "gt", "in_place": True, "model": checkpoint}
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 2 and summary["masks"] == 4 and summary["label_field"] == "gt"

    predictor = samkit.Predictor(samkit.load_model(checkpoint))
    for sample in dataset:
        width, height = image_size(sample.filepath)
        predictor.set_image(sample.filepath)
        for det, old in zip(sample.gt.detections, before[sample.id]):
            for key in ("_id", "label", "bounding_box", "confidence", "source", "iscrowd"):
                assert det.to_dict()[key] == old[key]
            full = check_box_relative_mask(det, width, height)  # the mask covers the box, cropped to it
            x, y, w, h = det.bounding_box
            box = np.array([x * width, y * height, (x + w) * width, (y + h) * height])
            masks, scores, _ = predictor.predict(box=box, multimask_output=False)
            x0, y0 = int(round(x * width)), int(round(y * height))
            x1, y1 = int(round((x + w) * width)), int(round((y + h) * height))
            expected = np.zeros_like(masks[0])
            expected[y0:y1, x0:x1] = masks[0][y0:y1, x0:x1]
            assert iou(full, expected) > 0.999
            assert det["predicted_iou"] == pytest.approx(float(scores[0]), abs=1e-4)

    # all boxes have masks now: a second run has nothing to do
    again = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert again["processed"] == 0 and again["skipped"] == 2


def test_segment_prompts_in_place_on_filtered_labels(make_dataset, photos, checkpoint):
    """A view that filters the prompt labels: only the visible boxes get masks, the others stay
    as they were (and are not dropped when the sample is saved); a later run on the whole
    dataset does only the boxes still without masks."""
    dataset = make_dataset([photos["bus.jpg"]], boxes=True)
    people = dataset.filter_labels("gt", fo.ViewField("label") == "person")
    params = {"prompt_field": "gt", "in_place": True, "model": checkpoint}
    summary = foo.execute_operator(PROMPTS, ctx={"view": people, "params": params}).result
    assert summary["processed"] == 1 and summary["masks"] == 1
    bus, person = dataset.first().gt.detections
    assert (bus.label, person.label) == ("bus", "person")
    assert bus.mask is None and person.mask is not None
    person_mask = person.mask.copy()

    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 1 and summary["masks"] == 1  # only the bus was missing
    bus, person = dataset.first().gt.detections
    assert bus.mask is not None and np.array_equal(person.mask, person_mask)


def test_segment_prompts_keypoints_positive_negative(make_dataset, photos, checkpoint):
    dataset = make_dataset([photos["truck.jpg"], photos["dog.jpg"]])
    truck, dog = dataset.select_by("filepath", [photos["truck.jpg"], photos["dog.jpg"]], ordered=True)
    truck["kp"] = fol.Keypoints(keypoints=[
        fol.Keypoint(label="wheel", points=[[0.3, 0.7]], note="one point"),
        fol.Keypoint(label="truck", points=[[0.5, 0.45], [float("nan"), float("nan")], [0.1, 0.1]],
                     sam_labels=[1, 1, 0]),
    ])
    truck.save()
    dog["kp"] = fol.Keypoints(keypoints=[
        fol.Keypoint(label="dog", points=[[0.35, 0.5], [0.9, 0.9]], sam_labels=[1, 0]),
    ])
    dog.save()

    params = {"prompt_field": "kp", "output_field": "kp_sam", "model": checkpoint}
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 2 and summary["failed"] == 0 and summary["masks"] == 3

    predictor = samkit.Predictor(samkit.load_model(checkpoint))
    for sample in dataset:
        width, height = image_size(sample.filepath)
        predictor.set_image(sample.filepath)
        for det, kp in zip(sample.kp_sam.detections, sample.kp.keypoints):
            assert det.label == kp.label and det["prompt_id"] == kp.id
            full = check_tight(det, width, height)
            points = np.array([p for p in kp.points if np.isfinite(p).all()]) * [width, height]
            labels = np.array(kp["sam_labels"] if kp.has_field("sam_labels") else [1])
            labels = labels[[i for i, p in enumerate(kp.points) if np.isfinite(p).all()]]
            masks, scores, _ = predictor.predict(point_coords=points, point_labels=labels,
                                                 multimask_output=len(points) == 1)
            best = int(np.argmax(scores))
            assert iou(full, masks[best]) > 0.999
            assert det["predicted_iou"] == pytest.approx(float(scores[best]), abs=1e-4)
            assert det.confidence == confidence_of(det["predicted_iou"])
    assert dataset.select_by("filepath", [photos["truck.jpg"]]).first().kp_sam.detections[0]["note"] == "one point"

    # Keypoints cannot hold masks: in-place is refused with a clear message, nothing written
    with pytest.raises(Exception, match="Keypoints, which cannot carry masks"):
        foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": {"prompt_field": "kp", "in_place": True,
                                                                          "model": checkpoint}})


def test_bad_inputs(make_dataset, photos, checkpoint, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(Path(photos["dog.jpg"]).read_bytes()[:2000])  # a truncated JPEG
    missing = tmp_path / "missing.jpg"
    dataset = make_dataset([photos["dog.jpg"], str(corrupt), str(missing)], boxes=True)
    for sample in dataset.select_by("filepath", [str(corrupt), str(missing)]):
        sample["gt"] = fol.Detections(detections=[fol.Detection(label="x", bounding_box=[0.1, 0.1, 0.5, 0.5])])
        sample.save()

    params = {"prompt_field": "gt", "output_field": "masks", "model": checkpoint}
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 1 and summary["failed"] == 2 and summary["error_field"] == "masks_error"
    by_path = {s.filepath: s for s in dataset}
    assert by_path[photos["dog.jpg"]].masks is not None and by_path[photos["dog.jpg"]].masks_error is None
    assert by_path[str(missing)].masks is None and "not found" in by_path[str(missing)].masks_error
    assert by_path[str(corrupt)].masks is None and "corrupt" in by_path[str(corrupt)].masks_error
    assert set(summary["errors"]) == {by_path[str(missing)].id, by_path[str(corrupt)].id}

    # the missing file appears: a re-run does only the failed samples and clears their errors
    missing.write_bytes(Path(photos["dog.jpg"]).read_bytes())
    corrupt.write_bytes(Path(photos["dog.jpg"]).read_bytes())
    again = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert again["processed"] == 2 and again["skipped"] == 1 and again["failed"] == 0
    assert dataset.count("masks") == 3 and dataset.count("masks_error") == 0

    # a prompt field of the wrong type: one clear error, nothing written
    dataset.set_values("cls", [fol.Classification(label="dog")] * len(dataset))
    with pytest.raises(Exception, match="prompt field 'cls' holds Classification"):
        foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": {"prompt_field": "cls",
                                                                          "output_field": "cls_sam"}})
    assert not dataset.has_field("cls_sam")
    # an output field of the wrong type
    with pytest.raises(Exception, match="'cls' already exists and holds Classification"):
        foo.execute_operator(EVERYTHING, ctx={"dataset": dataset, "params": {"output_field": "cls"}})

    # an empty view: nothing to do, said plainly, no model loaded, no field created
    empty = dataset.match(fo.ViewField("filepath") == "/nowhere.jpg")
    summary = foo.execute_operator(EVERYTHING, ctx={"view": empty, "params": {"output_field": "never",
                                                                              "model": "/no/such/model.pt"}}).result
    assert summary["total"] == 0 and summary["processed"] == 0 and "empty" in summary["message"]
    assert not dataset.has_field("never")


def test_png_mask_storage(make_dataset, photos, checkpoint, tmp_path, monkeypatch):
    dataset = make_dataset([photos["dogs.jpg"], photos["picture2.jpg"]], boxes=True)
    mask_dir = tmp_path / "masks"
    params = {"prompt_field": "gt", "output_field": "png_masks", "model": checkpoint, "mask_storage": "png",
              "mask_dir": str(mask_dir)}
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["png_samples"] == 2 and summary["mask_dir"] == str(mask_dir)
    for sample in dataset:
        width, height = image_size(sample.filepath)
        for det in sample.png_masks.detections:
            assert det.mask is None and det.mask_path == str(mask_dir / "png_masks" / sample.id / f"{det.id}.png")
            assert Path(det.mask_path).is_file()
            check_tight(det, width, height)

    # auto: inline while small, PNG files once a sample's masks pass the size limit
    from samkit.fiftyone import runner

    params.update(output_field="auto_masks", mask_storage="auto")
    foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params})
    assert all(d.mask is not None and d.mask_path is None for d in dataset.values("auto_masks.detections", unwind=True))
    monkeypatch.setattr(runner, "INLINE_MASK_LIMIT", 100)
    params.update(output_field="auto_masks2")
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["png_samples"] == 2
    assert all(d.mask is None and Path(d.mask_path).is_file()
               for d in dataset.values("auto_masks2.detections", unwind=True))

    # overwriting a sample (skip_existing off) replaces its PNG folder
    old_files = set((mask_dir / "png_masks").rglob("*.png"))
    params.update(output_field="png_masks", mask_storage="png", skip_existing=False)
    foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params})
    new_files = set((mask_dir / "png_masks").rglob("*.png"))
    assert len(new_files) == len(old_files) and not (old_files & new_files)


RESUMABLE_RUN = """
import sys
import fiftyone as fo
import fiftyone.operators as foo
dataset = fo.load_dataset(sys.argv[1])
params = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_field="sam",
              model=sys.argv[2])
foo.execute_operator("@samkit/fiftyone/segment_everything", ctx={"dataset": dataset, "params": params})
"""


def test_interrupted_run_resumes_with_only_missing_samples(make_dataset, photos, checkpoint, fiftyone_env):
    files = [photos[name] for name in ("dog.jpg", "groceries.jpg", "picture1.jpg", "picture2.jpg",
                                       "dogs.jpg", "bus.jpg")]
    dataset = make_dataset(files)
    run = subprocess.Popen([sys.executable, "-c", RESUMABLE_RUN, dataset.name, checkpoint], env=fiftyone_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (dataset.has_field("sam") and dataset.count("sam") >= 2):
            assert run.poll() is None, "the run ended before it could be interrupted:\n" + run.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
            dataset.reload()
    finally:
        run.kill()  # no clean shutdown: as if the worker died
        run.wait()
    dataset.reload()
    done = {s.id: [d.id for d in s.sam.detections] for s in dataset.exists("sam")}
    assert 2 <= len(done) < len(files)

    params = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_field="sam",
                  model=checkpoint)
    summary = foo.execute_operator(EVERYTHING, ctx={"dataset": dataset, "params": params}).result
    assert summary["skipped"] == len(done) and summary["processed"] == len(files) - len(done)
    assert dataset.count("sam") == len(files)
    for sample in dataset.select(list(done)):  # the samples done before were not redone
        assert [d.id for d in sample.sam.detections] == done[sample.id]


def test_selected_samples_target(make_dataset, photos, checkpoint):
    dataset = make_dataset([photos["dog.jpg"], photos["picture1.jpg"], photos["picture2.jpg"]])
    chosen = dataset.skip(1).first().id
    params = dict(SMALL_EVERYTHING, model=checkpoint, output_field="sel", view_target="SELECTED_SAMPLES",
                  max_masks=1)
    summary = foo.execute_operator(EVERYTHING, ctx={"dataset": dataset, "selected": [chosen], "params": params}).result
    assert summary["total"] == 1 and summary["processed"] == 1
    assert dataset.exists("sel").values("id") == [chosen]


def test_output_field_defaults_when_not_given(make_dataset, photos, checkpoint):
    """From Python, a call without output_field takes the documented default instead of failing
    FiftyOne's validation of a required property."""
    dataset = make_dataset([photos["dog.jpg"]], boxes=True)
    everything = foo.execute_operator(EVERYTHING, ctx={"dataset": dataset,
                                                       "params": dict(SMALL_EVERYTHING, model=checkpoint)}).result
    assert everything["label_field"] == "sam_everything" and everything["processed"] == 1
    assert len(dataset.first()["sam_everything"].detections) == 5
    prompts = foo.execute_operator(PROMPTS, ctx={"dataset": dataset,
                                                 "params": {"prompt_field": "gt", "model": checkpoint}}).result
    assert prompts["label_field"] == "gt_sam" and prompts["processed"] == 1
    assert dataset.first()["gt_sam"] is not None


def test_grouped_dataset_runs_on_the_active_slice(photos, checkpoint):
    """A grouped dataset: the slice the App (or the caller) has active is segmented; without one,
    a clear error."""
    dataset = fo.Dataset()
    try:
        dataset.add_group_field("group", default="left")
        groups = [fo.Group(), fo.Group()]
        dataset.add_samples(
            [fo.Sample(filepath=photos["dog.jpg"], group=g.element("left")) for g in groups]
            + [fo.Sample(filepath=photos["bus.jpg"], group=groups[0].element("right"))]
        )
        params = dict(SMALL_EVERYTHING, model=checkpoint, output_field="sam")
        summary = foo.execute_operator(EVERYTHING, ctx={"dataset": dataset, "group_slice": "right",
                                                        "params": params}).result
        assert summary["total"] == 1 and summary["processed"] == 1
        right = dataset.select_group_slices("right")
        left = dataset.select_group_slices("left")
        assert right.count("sam") == 1 and left.count("sam") == 0
        assert Path(right.first().filepath).name == "bus.jpg"
        with pytest.raises(Exception, match="media type is 'group'"):
            segment_everything(dataset, "sam2", model=checkpoint)
    finally:
        dataset.delete()


def test_view_that_leaves_out_fields(make_dataset, photos, checkpoint, tmp_path):
    """A view made with select_fields: an output field it leaves out (but the dataset has) is a
    clear error before anything runs; an error field it leaves out is still cleared."""
    late = tmp_path / "late.jpg"
    dataset = make_dataset([photos["dog.jpg"], str(late)], boxes=True)
    for sample in dataset.select_by("filepath", [str(late)]):
        sample["gt"] = fol.Detections(detections=[fol.Detection(label="x", bounding_box=[0.1, 0.1, 0.5, 0.5])])
        sample.save()
    params = {"prompt_field": "gt", "output_field": "o", "model": checkpoint}
    first = foo.execute_operator(PROMPTS, ctx={"view": dataset.select_fields("gt"), "params": params}).result
    assert first["processed"] == 1 and first["failed"] == 1 and dataset.count("o_error") == 1

    with pytest.raises(Exception, match="leaves out the field 'o'"):
        foo.execute_operator(PROMPTS, ctx={"view": dataset.select_fields("gt"), "params": params})

    late.write_bytes(Path(photos["dog.jpg"]).read_bytes())
    again = foo.execute_operator(PROMPTS, ctx={"view": dataset.select_fields(["gt", "o"]), "params": params}).result
    assert again["processed"] == 1 and again["skipped"] == 1 and again["failed"] == 0
    assert dataset.count("o") == 2 and dataset.count("o_error") == 0


def test_run_stops_when_asked(make_dataset, photos, checkpoint):
    """stop_requested is asked before each sample: True ends the run, what was done stays."""
    dataset = make_dataset([photos["dog.jpg"], photos["bus.jpg"], photos["truck.jpg"]])
    asked = []

    def stop_requested():
        asked.append(True)
        return len(asked) > 1  # let the first sample through

    options = {k: v for k, v in SMALL_EVERYTHING.items()}
    summary = segment_everything(dataset, "sam", model=checkpoint, stop_requested=stop_requested,
                                                 **options)
    assert summary.stopped and summary.processed == 1 and dataset.count("sam") == 1
    assert summary.message.startswith("stopped on request: 1 samples written")


def test_delegated_run_marked_failed_is_asked_to_stop(make_dataset, photos, monkeypatch):
    """The operators' stop check reads the delegated operation's state from the database: it
    turns True once the operation is marked failed (`fiftyone delegated fail`)."""
    from fiftyone.operators.executor import ExecutionContext

    from samkit.fiftyone import operators

    dataset = make_dataset([photos["dog.jpg"]])
    queued = foo.execute_operator(EVERYTHING, ctx={"dataset": dataset, "params": dict(SMALL_EVERYTHING),
                                                   "request_delegation": True})
    op_id = queued.result["id"]
    monkeypatch.setattr(operators, "STOP_CHECK_INTERVAL_S", 0.0)
    ctx = ExecutionContext(request_params={"delegated": True, "dataset_name": dataset.name},
                           delegated_operation_id=op_id)
    stop_requested = operators._stop_requested(ctx)
    assert stop_requested is not None and stop_requested() is False
    DelegatedOperationService().set_failed(op_id)
    assert stop_requested() is True
    immediate = ExecutionContext(request_params={"dataset_name": dataset.name})
    assert operators._stop_requested(immediate) is None


@pytest.mark.parametrize("uri", [EVERYTHING, PROMPTS])
def test_scheduling_on_a_non_persistent_dataset_is_refused(photos, checkpoint, uri):
    """A delegated worker loads the dataset later, in its own process, and FiftyOne deletes a
    non-persistent dataset when the session that made it ends: scheduling is refused before
    anything is queued, saying how to fix it; the App offers only "Execute"; running now works."""
    from fiftyone.operators.executor import ExecutionContext

    dataset = fo.Dataset()  # not persistent
    try:
        dataset.add_samples([fo.Sample(filepath=photos["dog.jpg"],
                                       gt=fol.Detections(detections=[fol.Detection(label="dog",
                                                                                    bounding_box=BOXES["dog.jpg"][0][1])]))])
        params = (dict(SMALL_EVERYTHING, model=checkpoint, output_field="out") if uri == EVERYTHING
                  else {"prompt_field": "gt", "output_field": "out", "model": checkpoint})
        service = DelegatedOperationService()
        with pytest.raises(Exception, match=r"not persistent.*set dataset\.persistent = True, or run it immediately"):
            foo.execute_operator(uri, ctx={"dataset": dataset, "params": params, "request_delegation": True})
        assert service.list_operations(dataset_name=dataset.name) == []
        assert not dataset.has_field("out")

        operator = foo.get_operator(uri)
        ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params})
        options = operator.resolve_execution_options(ctx)
        assert options.allow_immediate_execution and not options.allow_delegated_execution
        hint = operator.resolve_input(ctx).type.properties["delegation_hint"]
        assert not hint.invalid and "not persistent" in hint.view.label  # the form says why

        summary = foo.execute_operator(uri, ctx={"dataset": dataset, "params": params}).result
        assert summary["processed"] == 1 and dataset.count("out") == 1

        dataset.persistent = True  # now it can be scheduled
        assert operator.resolve_execution_options(ctx).allow_delegated_execution
        queued = foo.execute_operator(uri, ctx={"dataset": dataset, "params": params, "request_delegation": True})
        assert queued.delegated
        service.delete_operation(queued.result["id"])
    finally:
        dataset.delete()


def test_samples_without_prompts_get_an_empty_result_like_apply_model(make_dataset, photos, checkpoint):
    """A sample whose prompt field is None or an empty list is processed, not skipped: the new
    field gets an empty Detections (as apply_model writes), the summary says so in words, and a
    later run picks it up once it has prompts. In place, its prompt field is left as it was."""
    from samkit.fiftyone import SamModel

    dataset = make_dataset([photos["dog.jpg"], photos["picture1.jpg"], photos["picture2.jpg"]], boxes=True)
    dog, none, empty = dataset.select_by("filepath", [photos["dog.jpg"], photos["picture1.jpg"],
                                                      photos["picture2.jpg"]], ordered=True)
    none.gt = None
    none.save()
    empty.gt = fol.Detections()
    empty.save()

    params = {"prompt_field": "gt", "output_field": "out", "model": checkpoint}
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 3 and summary["no_prompts"] == 2
    assert summary["skipped"] == 0 and summary["failed"] == 0 and summary["masks"] == 1
    assert "3 samples written to 'out' (1 masks), 2 of them had no prompts in 'gt'" in summary["message"]

    dataset.apply_model(SamModel(model=checkpoint), "applied", prompt_field="gt", skip_failures=False)
    for sample in dataset:  # both paths: the same labels, an empty Detections where nothing was prompted
        assert isinstance(sample.out, fol.Detections) and isinstance(sample.applied, fol.Detections)
        assert len(sample.out.detections) == len(sample.applied.detections) == (1 if sample.id == dog.id else 0)
    assert dataset.count("out") == 3 and not dataset.has_field("out_error")

    # prompts added later: a resumed run redoes that sample, not the ones already done
    none = dataset[none.id]
    none.gt = fol.Detections(detections=[fol.Detection(label="object", bounding_box=BOXES["picture1.jpg"][0][1])])
    none.save()
    again = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert again["processed"] == 1 and again["skipped"] == 2 and again["no_prompts"] == 0
    assert len(dataset[none.id].out.detections) == 1

    # in place: nothing to add masks to, and the user's (empty) prompt field stays as it was
    bare = dataset.add_sample(fo.Sample(filepath=photos["bus.jpg"]))
    in_place = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": {"prompt_field": "gt", "in_place": True,
                                                                                 "model": checkpoint}}).result
    assert in_place["processed"] == 2 and in_place["no_prompts"] == 2 and in_place["skipped"] == 0
    assert "2 had no prompts in 'gt' (left as they were)" in in_place["message"]
    assert dataset[bare].gt is None and dataset[empty.id].gt.detections == []
    assert not dataset.has_field("gt_error") or dataset.count("gt_error") == 0


def blind_checkpoint(checkpoint: str, folder: Path) -> str:
    """The seeded MobileSAM with its mask hypernetworks' last layers zeroed: every mask logit is
    0, so every prompt gets an empty mask (a real model whose decoder finds nothing)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    zeroed = [k for k in state if k.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in k]
    assert zeroed
    for key in zeroed:
        state[key] = torch.zeros_like(state[key])
    path = folder / "mobile_sam_blind.pt"
    torch.save(state, path)
    return str(path)


def test_a_prompt_whose_mask_is_empty_is_recorded(make_dataset, photos, checkpoint, tmp_path):
    """A usable box for which SAM finds nothing: no detection is written for it (new field) or
    an empty mask of area 0 (in place), and the sample's error record names the prompt."""
    blind = blind_checkpoint(checkpoint, tmp_path)
    dataset = make_dataset([photos["dogs.jpg"]], boxes=True)
    sample = dataset.first()
    boxes = sample.gt.detections
    params = {"prompt_field": "gt", "output_field": "gt_sam", "model": blind}
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 1 and summary["failed"] == 0 and summary["masks"] == 0
    assert summary["bad_prompts"] == len(boxes)
    sample = dataset[sample.id]
    assert sample.gt_sam.detections == []
    error = sample.gt_sam_error
    assert error.startswith(f"sample {sample.id}: {len(boxes)} prompt")
    assert f"detection {boxes[0].id} ({boxes[0].label!r}) gave an empty mask (no object found in its box)" in error

    params = {"prompt_field": "gt", "in_place": True, "model": blind}
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["bad_prompts"] == len(boxes)
    sample = dataset[sample.id]
    assert all(d.mask is not None and not d.mask.any() and d["area"] == 0 for d in sample.gt.detections)
    assert "gave an empty mask" in sample.gt_error


def test_bad_prompts_are_recorded_and_the_good_ones_still_get_masks(make_dataset, photos, checkpoint):
    """A box of zero size or outside the image, or keypoint labels that do not match its points:
    that prompt gets no mask and the sample an error record naming it; the sample's other
    prompts get their masks, and a re-run after the fix clears the record."""
    dataset = make_dataset([photos["dogs.jpg"], photos["truck.jpg"]], boxes=True)
    dogs, truck = dataset.select_by("filepath", [photos["dogs.jpg"], photos["truck.jpg"]], ordered=True)
    good = dogs.gt.detections[0]
    dogs.gt.detections = [good,
                          fol.Detection(label="flat", bounding_box=[0.5, 0.5, 0.0, 0.2]),
                          fol.Detection(label="away", bounding_box=[1.2, 1.1, 0.1, 0.1])]
    dogs.save()
    truck["kp"] = fol.Keypoints(keypoints=[
        fol.Keypoint(label="truck", points=[[0.5, 0.45]]),
        fol.Keypoint(label="wheel", points=[[0.3, 0.7], [0.1, 0.1], [0.9, 0.1]], sam_labels=[1, 0]),
    ])
    truck.save()

    params = {"prompt_field": "gt", "output_field": "gt_sam", "model": checkpoint}
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 2 and summary["failed"] == 0 and summary["masks"] == 2
    assert summary["bad_prompts"] == 2 and summary["bad_prompt_samples"] == 1
    assert "2 unusable prompts in 1 samples got no mask (see the 'gt_sam_error' field)" in summary["message"]
    dogs = dataset[dogs.id]
    assert [d["prompt_id"] for d in dogs.gt_sam.detections] == [good.id]
    width, height = image_size(dogs.filepath)
    predictor = samkit.Predictor(samkit.load_model(checkpoint))
    predictor.set_image(dogs.filepath)
    x, y, w, h = good.bounding_box
    masks, _, _ = predictor.predict(box=np.array([x * width, y * height, (x + w) * width, (y + h) * height]),
                                    multimask_output=False)
    assert iou(check_tight(dogs.gt_sam.detections[0], width, height), masks[0]) > 0.999
    error = dogs.gt_sam_error
    assert error == summary["errors"][dogs.id] and "\n" not in error
    assert error.startswith(f"sample {dogs.id}: 2 prompts in 'gt' got no mask: ")
    flat, away = dogs.gt.detections[1:]
    assert f"detection {flat.id} ('flat') has a box of zero size [0.5, 0.5, 0, 0.2]" in error
    assert f"detection {away.id} ('away') has a box outside the image [1.2, 1.1, 0.1, 0.1]" in error
    assert dataset[truck.id].gt_sam_error is None

    # keypoints: a labels list of the wrong length spoils that keypoint only
    params = {"prompt_field": "kp", "output_field": "kp_sam", "model": checkpoint}
    summary = foo.execute_operator(PROMPTS, ctx={"view": dataset.exists("kp"), "params": params}).result
    assert summary["processed"] == 1 and summary["failed"] == 0 and summary["bad_prompts"] == 1
    truck = dataset[truck.id]
    assert [d.label for d in truck.kp_sam.detections] == ["truck"]
    wheel = truck.kp.keypoints[1]
    assert truck.kp_sam_error == (f"sample {truck.id}: 1 prompt in 'kp' got no mask: keypoint {wheel.id} ('wheel') "
                                  "has 3 points but 2 values in its 'sam_labels' attribute (give one label per "
                                  "point: 1 positive, 0 negative)")

    # fixed: the resumed run redoes the sample with the record (and only it), and clears it,
    # also from a view that leaves the error field out
    wheel["sam_labels"] = [1, 0, 0]
    truck.save()
    view = dataset.exists("kp").select_fields(["kp", "kp_sam"])
    assert not view.has_field("kp_sam_error")
    again = foo.execute_operator(PROMPTS, ctx={"view": view, "params": params}).result
    assert again["processed"] == 1 and again["bad_prompts"] == 0
    truck = dataset[truck.id]
    assert [d.label for d in truck.kp_sam.detections] == ["truck", "wheel"] and truck.kp_sam_error is None

    # in place: the good boxes get masks, the bad ones are named
    params = {"prompt_field": "gt", "in_place": True, "model": checkpoint}
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": params}).result
    assert summary["processed"] == 2 and summary["masks"] == 2 and summary["bad_prompts"] == 2
    dogs = dataset[dogs.id]
    assert [d.mask is not None for d in dogs.gt.detections] == [True, False, False]
    assert "2 prompts in 'gt' got no mask" in dogs.gt_error


def test_the_next_image_is_read_while_the_model_works(make_dataset, photos, checkpoint, monkeypatch):
    """While SAM segments one sample, the next sample's image is already being read and decoded
    in the background (on a GPU the read can take as long as the model). A sample without prompts
    never has its image read; results are those of the predictor, as in the other tests."""
    from samkit.fiftyone import segmenter

    files = [photos["dog.jpg"], photos["picture1.jpg"], photos["bus.jpg"], photos["picture2.jpg"]]
    dataset = make_dataset(files, boxes=True)
    last = dataset.select_by("filepath", [photos["picture2.jpg"]]).first()
    last.gt = None
    last.save()

    read = {path: threading.Event() for path in files}
    readers = set()
    real_load_image = samkit.load_image

    def load_image(path):
        readers.add(threading.current_thread().name)
        read[path].set()
        return real_load_image(path)

    monkeypatch.setattr(samkit, "load_image", load_image)
    real_prompts = segmenter.Segmenter.prompts
    overlapped = []

    def prompts(self, image, value, **kwargs):
        k = len(overlapped)
        if k + 1 < 3:  # the next sample with prompts is being read before this one is segmented
            overlapped.append(read[files[k + 1]].wait(30))
        else:
            overlapped.append(True)
        return real_prompts(self, image, value, **kwargs)

    monkeypatch.setattr(segmenter.Segmenter, "prompts", prompts)
    summary = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": {
        "prompt_field": "gt", "output_field": "out", "model": checkpoint}}).result
    assert summary["processed"] == 4 and summary["no_prompts"] == 1 and summary["failed"] == 0
    assert overlapped == [True, True, True]
    assert not read[photos["picture2.jpg"]].is_set()
    assert readers and all(name.startswith("samkit-prefetch") for name in readers)
    predictor = samkit.Predictor(samkit.load_model(checkpoint))
    for sample in dataset.select_by("filepath", files[:3]):
        _check_prompt_masks(sample, predictor, field="out")
