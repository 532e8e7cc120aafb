"""Bad input: one clear line each (an AnnotateError from the library, `samkit: error: ...` and exit
2 from the command), raised before anything is written; and the command's happy path."""

from __future__ import annotations

import json
import shutil

import pytest

import samkit
from samkit.annotate import AnnotateError
from samkit.cli import main


@pytest.fixture
def data(images_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(images_dir / "dog.jpg", folder / "dog.jpg")
    return folder


def error_of(*args, **kwargs) -> str:
    with pytest.raises(AnnotateError) as err:
        samkit.auto_annotate(*args, progress=False, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_folder_and_no_images(tmp_path, data):
    assert "data not found" in error_of(tmp_path / "nope", data)
    (tmp_path / "empty").mkdir()
    assert "no image files in" in error_of(tmp_path / "empty", data)


def test_detector_of_unknown_kind(data, tmp_path):
    weird = tmp_path / "model.xyz"
    weird.write_text("?")
    assert "unknown kind of detector file (.xyz)" in error_of(data, weird)
    assert "detector not found" in error_of(data, tmp_path / "missing.onnx")
    (tmp_path / "nothing").mkdir()
    assert "not a detector" in error_of(data, tmp_path / "nothing")
    assert "give a detector" in error_of(data, None)


def test_labels_without_images(data, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "other.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    message = error_of(data, labels)
    assert "labels without images" in message and "'other'" in message
    coco = tmp_path / "boxes.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "cat.jpg"}], "annotations": [], "categories": []}))
    assert "labels without images" in error_of(data, coco)
    coco.write_text(json.dumps({"annotations": []}))
    assert "not a COCO detection file" in error_of(data, coco)


def test_class_filter_matching_nothing(data, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "dog.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    (labels / "classes.txt").write_text("person\ncar\nbus\ndog\n")
    message = error_of(data, labels, classes=[7])
    assert "match none of the classes of the YOLO box labels" in message and "3: dog" in message
    assert "'cat'" in error_of(data, labels, classes=["cat"])
    (labels / "classes.txt").unlink()  # no names: checked against the ids the files use
    assert "match none" in error_of(data, labels, classes=[0])


def test_text_with_an_image_only_detector_and_a_text_detector_without_text(data, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "dog.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    message = error_of(data, labels, text="dog")
    assert "takes no text" in message and "YOLO box labels" in message
    assert "give the text to look for" in error_of(data, "IDEA-Research/grounding-dino-tiny")


def test_more_bad_input(data, tmp_path, mobile_sam_checkpoint):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "dog.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert "would overwrite them" in error_of(data, labels, output_dir=labels)
    assert "unknown format 'voc'" in error_of(data, labels, format="voc")
    assert "needs the ultralytics package" in error_of(data, "yolo11n.pt")
    assert "torchvision" in error_of(data, "yolo11n.pt") and "format=onnx" in error_of(data, "yolo11n.pt")
    assert "pieces must be one of" in error_of(data, labels, pieces="some", sam_model=mobile_sam_checkpoint)
    assert "not under Label Studio's local-files document root" in error_of(
        data, labels, format="labelstudio", sam_model=mobile_sam_checkpoint, output_dir=tmp_path / "ls",
        format_options={"document_root": str(tmp_path / "elsewhere")})
    assert "has no option colour" in error_of(data, labels, format="coco", format_options={"colour": "red"})
    with pytest.raises(samkit.CheckpointError):  # the model loads before any output is written
        samkit.auto_annotate(data, labels, sam_model=tmp_path / "nope.pt", output_dir=tmp_path / "out",
                             progress=False)
    assert not (tmp_path / "out" / "dog.txt").exists()
    (labels / "dog.txt").write_text("0 0.5 0.5 zero 0.2\n")  # a malformed line: that image fails, reported
    with pytest.warns(samkit.annotate.AnnotateWarning, match=r"dog.txt:1: expected numbers"):
        summary = samkit.auto_annotate(data, labels, sam_model=mobile_sam_checkpoint, output_dir=tmp_path / "out",
                                       progress=False)
    assert summary.done == 0 and len(summary.failed) == 1


def test_command_one_line_errors(tmp_path, capsys):
    assert main(["annotate", str(tmp_path / "nope"), "--det-model", "x.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("samkit: error: data not found") and err.count("\n") == 1
    assert main(["annotate", str(tmp_path), "-O", "novalue"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_command_writes_the_dataset(photos, mobile_sam_checkpoint, tmp_path, capsys):
    images, boxes = photos
    data = tmp_path / "pics"
    shutil.copytree(images, data)
    (data / "bus.jpg").unlink()
    (data / "dogs.jpg").unlink()
    rc = main(["annotate", str(data), "--det-model", str(boxes), "--model", str(mobile_sam_checkpoint),
               "--format", "coco", "--mask-format", "polygons", "--classes", "dog", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    default = tmp_path / "pics_auto_annotate_labels"  # Ultralytics' default, beside the data
    assert "1 images annotated, 1 objects" in out.out and str(default / "annotations.json") in out.out
    doc = json.loads((default / "annotations.json").read_text())
    assert [a["category_id"] for a in doc["annotations"]] == [18] and isinstance(doc["annotations"][0]["segmentation"],
                                                                                 list)
