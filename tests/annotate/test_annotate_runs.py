"""Re-runs, failures, interruption and scale: overwrite or skip (never append), empty label files
for images without detections, corrupt images reported and skipped, an interrupted COCO run
resumed from its journal, the progress bar only on a terminal, Dask workers.

Images here are copies of one photo under several names: the session predictor's embedding
cache (keyed by pixels) then runs the image encoder once for all of them."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

import samkit
from annotate_helpers import iou, yolo_masks
from samkit.annotate import AnnotateError, AnnotateWarning

BOX = [64, 53, 504, 507]  # the dog in dog.jpg


class BoxDetector:
    """A detector function: one 'dog' box on every photo, none on a uniform image; counts its
    calls and raises KeyboardInterrupt at call `interrupt_at` (an interrupted run)."""

    names = {0: "dog"}

    def __init__(self, interrupt_at: int | None = None):
        self.calls = 0
        self.interrupt_at = interrupt_at

    def __call__(self, image):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        if image.std() == 0:
            return np.zeros((0, 4)), np.zeros(0), np.zeros(0)
        return np.array([BOX], float), np.array([0.9]), np.array([0])


def copies(images_dir, folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(images_dir / "dog.jpg", folder / name)
    return folder


def test_rerun_overwrites_never_appends_and_skip_existing_resumes(images_dir, sam_predictor, tmp_path):
    data = copies(images_dir, tmp_path / "images", ["a.jpg", "b.jpg", "c.jpg"])
    out = tmp_path / "out"
    first = samkit.auto_annotate(data, BoxDetector(), sam_model=sam_predictor, output_dir=out, progress=False)
    assert first.done == 3 and first.objects == 3
    texts = {p.name: p.read_text() for p in out.glob("*.txt")}
    assert sorted(texts) == ["a.txt", "b.txt", "c.txt", "classes.txt"]
    assert texts["a.txt"].count("\n") == 1
    samkit.auto_annotate(data, BoxDetector(), sam_model=sam_predictor, output_dir=out, progress=False)
    assert {p.name: p.read_text() for p in out.glob("*.txt")} == texts  # overwritten with the same, not appended
    (out / "a.txt").write_text("kept\n")
    (out / "b.txt").unlink()
    detector = BoxDetector()
    summary = samkit.auto_annotate(data, detector, sam_model=sam_predictor, output_dir=out, skip_existing=True,
                                   progress=False)
    assert detector.calls == 1 and summary.skipped_existing == 2 and summary.done == 1
    assert (out / "a.txt").read_text() == "kept\n" and (out / "b.txt").read_text() == texts["b.txt"]
    with pytest.raises(AnnotateError, match="other settings.*detect"):
        samkit.auto_annotate(data, BoxDetector(), sam_model=sam_predictor, output_dir=out, conf=0.5,
                             skip_existing=True, progress=False)
    assert (out / "a.txt").read_text() == "kept\n"  # refused before touching anything
    with pytest.raises(AnnotateError, match="other settings.*sam_model"):  # SAM's precision counts too
        samkit.auto_annotate(data, BoxDetector(), sam_model=sam_predictor.model.checkpoint_path, dtype="bfloat16",
                             output_dir=out, skip_existing=True, progress=False)


def test_empty_and_corrupt_images(images_dir, sam_predictor, tmp_path):
    from PIL import Image

    data = copies(images_dir, tmp_path / "images", ["photo.jpg"])
    Image.new("RGB", (64, 48), (90, 90, 90)).save(data / "blank.png")
    (data / "broken.jpg").write_bytes((images_dir / "dog.jpg").read_bytes()[:3000])  # cut short
    out = tmp_path / "out"
    with pytest.warns(AnnotateWarning, match="broken.jpg"):
        summary = samkit.auto_annotate(data, BoxDetector(), sam_model=sam_predictor, output_dir=out, progress=False)
    assert [key for key, _ in summary.failed] == ["broken.jpg"] and "corrupt or truncated" in summary.failed[0][1]
    assert (summary.done, summary.empty_images) == (2, 1)
    assert (out / "blank.txt").read_text() == ""  # no detections: background
    assert not (out / "broken.txt").exists()  # nothing written for it: a re-run retries it
    shutil.copy(images_dir / "dog.jpg", data / "broken.jpg")
    detector = BoxDetector()
    again = samkit.auto_annotate(data, detector, sam_model=sam_predictor, output_dir=out, skip_existing=True,
                                 progress=False)
    assert detector.calls == 1 and again.failed == [] and (out / "broken.txt").read_text().count("\n") == 1


def test_interrupted_coco_run_resumes_from_its_journal(images_dir, sam_predictor, tmp_path):
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    data = copies(images_dir, tmp_path / "images", names)
    clean = samkit.auto_annotate(data, BoxDetector(), sam_model=sam_predictor, output_dir=tmp_path / "clean",
                                 format="coco", progress=False)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        samkit.auto_annotate(data, BoxDetector(interrupt_at=3), sam_model=sam_predictor, output_dir=out,
                             format="coco", progress=False)
    assert not (out / "annotations.json").exists()  # no half-written file
    journal = out / ".samkit-annotate" / "coco.jsonl"
    assert [json.loads(line)["key"] for line in journal.read_text().splitlines()] == ["a.jpg", "b.jpg"]
    with open(journal, "ab") as handle:
        handle.write(b'{"key": "c.jpg", "wid')  # a line cut short by a crash: ignored
    detector = BoxDetector()
    summary = samkit.auto_annotate(data, detector, sam_model=sam_predictor, output_dir=out, format="coco",
                                   skip_existing=True, progress=False)
    assert detector.calls == 2 and summary.skipped_existing == 2
    resumed = json.loads((out / "annotations.json").read_text())
    reference = json.loads(clean.outputs[0].read_text())
    assert [i["file_name"] for i in resumed["images"]] == names and [i["id"] for i in resumed["images"]] == [1, 2, 3, 4]
    assert [a["id"] for a in resumed["annotations"]] == [1, 2, 3, 4]
    assert [a["segmentation"] for a in resumed["annotations"]] == [a["segmentation"] for a in reference["annotations"]]
    assert resumed["categories"] == [{"id": 0, "name": "dog"}]


def test_progress_bar_only_on_a_terminal(sam_predictor, monkeypatch, tmp_path):
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32)).save(data / f"{i}.png")  # uniform: no boxes, SAM never runs

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, shown in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr("sys.stderr", stream)
        samkit.auto_annotate(data, BoxDetector(), sam_model=sam_predictor, output_dir=tmp_path / "out")
        assert ("auto-annotate" in stream.getvalue()) is shown


def test_dask_workers_write_what_one_process_writes(photos, sam_predictor, mobile_sam_checkpoint, tmp_path):
    images, boxes = photos
    data = tmp_path / "images"
    data.mkdir()
    for name in ("dog.jpg", "dogs.jpg"):
        shutil.copy(images / name, data / name)
    here = samkit.auto_annotate(data, boxes, sam_model=sam_predictor, output_dir=tmp_path / "here", progress=False)
    spread = samkit.auto_annotate(data, boxes, sam_model=str(mobile_sam_checkpoint), output_dir=tmp_path / "dask",
                                  dask=1, progress=False)
    assert (spread.done, spread.objects) == (here.done, here.objects) == (2, 3)
    for name, (width, height) in {"dog": (800, 534), "dogs": (1072, 603)}.items():
        classes_here, masks_here = yolo_masks(tmp_path / "here" / f"{name}.txt", width, height)
        classes_dask, masks_dask = yolo_masks(tmp_path / "dask" / f"{name}.txt", width, height)
        assert classes_here == classes_dask
        assert min(iou(a, b) for a, b in zip(masks_here, masks_dask)) >= 0.99


