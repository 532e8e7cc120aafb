"""The fine-tuning data readers on real data (the Kampala chips with their OSM footprints, the
teacher's RLE masks), and the errors that name the bad item.

The readers must agree with each other (the same footprints written as COCO polygons and as YOLO
labels give the same masks) and with an independent rasteriser (rasterio.features.rasterize of
the footprints), and every kind of bad data must be one DatasetError naming the file, image and
object, raised before any output exists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from finetune_data import CHIP, polygon_rings
from PIL import Image

import samkit
from samkit import DatasetError
from samkit.finetune import decode_mask, read_coco, read_dataset, read_yolo, split_validation


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def footprint_datasets(kampala_chips, tmp_path_factory):
    """The first 4 chips with their footprints as a COCO polygon file and as a YOLO dataset."""
    root = tmp_path_factory.mktemp("footprints")
    chips = kampala_chips[:4]
    images, annotations = [], []
    yolo = root / "yolo"
    for split in ("train",):
        (yolo / "images" / split).mkdir(parents=True)
        (yolo / "labels" / split).mkdir(parents=True)
    (yolo / "data.yaml").write_text("path: .\ntrain: images/train\nnames:\n  0: building\n")
    for image_id, chip in enumerate(chips, start=1):
        Image.fromarray(chip.image).save(root / chip.name)
        shutil.copy(root / chip.name, yolo / "images" / "train" / chip.name)
        images.append({"id": image_id, "file_name": chip.name, "width": CHIP, "height": CHIP})
        lines = []
        for part in chip.footprints:
            rings = polygon_rings(part)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 7, "iscrowd": 0,
                                "segmentation": [ring.reshape(-1).tolist() for ring in rings]})
            lines += ["0 " + " ".join(f"{v:.6f}" for v in (ring / CHIP).reshape(-1)) for ring in rings]
        (yolo / "labels" / "train" / chip.name.replace(".png", ".txt")).write_text("\n".join(lines) + "\n")
    coco = root / "footprints.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 7, "name": "building"}]}))
    return coco, yolo, chips


def test_coco_polygons_match_an_independent_rasteriser(footprint_datasets):
    from rasterio.features import rasterize

    coco, _, chips = footprint_datasets
    records = read_coco(coco)
    assert [Path(r.image).name for r in records] == [c.name for c in chips if c.footprints]
    for record, chip in zip(records, chips):
        assert record.size == (CHIP, CHIP)
        assert [o.label for o in record.objects] == ["building"] * len(chip.footprints)
        assert [o.name for o in record.objects][0].startswith("annotation ")
        for obj, part in zip(record.objects, chip.footprints):
            mask = decode_mask(obj)
            reference = rasterize([part], out_shape=(CHIP, CHIP)).astype(bool)
            assert iou(mask, reference) > 0.85, obj.name
        assert np.array_equal(record.load(), chip.image)


def test_yolo_reader_gives_the_coco_masks(footprint_datasets):
    coco, yolo, _ = footprint_datasets
    from_coco = read_coco(coco)
    for source in (yolo, yolo / "data.yaml"):
        from_yolo = read_yolo(source)
        assert [Path(r.image).name for r in from_yolo] == [Path(r.image).name for r in from_coco]
        for a, b in zip(from_yolo, from_coco):
            assert [o.label for o in a.objects] == ["building"] * len(b.objects)
            for oa, ob in zip(a.objects, b.objects):
                # the same polygons, normalised to 6 decimals and back: at most a pixel's edge apart
                assert iou(decode_mask(oa), decode_mask(ob)) > 0.97
    assert len(read_dataset(yolo)) == len(from_coco)


def test_coco_rle_and_the_images_folder(kampala_teacher, tmp_path):
    data = json.loads(kampala_teacher.coco.read_text())
    moved = tmp_path / "annotations" / "teacher.json"
    moved.parent.mkdir()
    moved.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"image file not found.*--images"):
        read_coco(moved)
    records = read_coco(moved, images=kampala_teacher.folder)
    assert sum(len(r.objects) for r in records) == kampala_teacher.objects == len(data["annotations"])
    first = data["annotations"][0]
    expected = samkit.mask_utils.rle_to_mask(first["segmentation"])
    record = next(r for r in records if Path(r.image).name == data["images"][first["image_id"] - 1]["file_name"])
    assert np.array_equal(decode_mask(record.objects[0]), expected)
    # uncompressed RLE (counts as a list) reads to the same mask
    data["annotations"][0]["segmentation"] = samkit.mask_utils.mask_to_uncompressed_rle(expected)
    moved.write_text(json.dumps(data))
    again = read_coco(moved, images=kampala_teacher.folder)
    assert np.array_equal(decode_mask(next(r for r in again if r.image == record.image).objects[0]), expected)


def write_coco(path: Path, image_name: str, segmentation, size=(CHIP, CHIP), category="building", **extra):
    annotation = {"id": 5, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": segmentation, **extra}
    if segmentation is None:
        annotation.pop("segmentation")
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": image_name, "width": size[1], "height": size[0]}],
        "annotations": [annotation], "categories": [{"id": 1, "name": category}],
    }))
    return path


@pytest.fixture()
def chip_file(kampala_chips, tmp_path):
    Image.fromarray(kampala_chips[0].image).save(tmp_path / "chip.png")
    return tmp_path / "chip.png"


SQUARE = [[10, 10, 60, 10, 60, 60, 10, 60]]


def test_bad_data_is_one_error_naming_the_item(chip_file, tmp_path):
    cases = {
        "empty RLE": (samkit.mask_utils.mask_to_rle(np.zeros((CHIP, CHIP), bool)), {},
                      r"teacher.json: image 1 \(chip.png\), annotation 5: the mask is empty"),
        "zero-area polygon": ([[10, 10, 20, 20, 30, 30]], {}, r"annotation 5: the polygon covers no pixel"),
        "polygon outside": ([[10, 10, 400, 10, 400, 60, 10, 60]], {},
                            r"annotation 5: polygon 0 reaches outside the 256x256 image \(x 10\.\.400"),
        "too few coordinates": ([[10, 10, 60, 10]], {}, r"annotation 5: polygon 0 has 4 coordinates"),
        "box only": (None, {"bbox": [1, 2, 3, 4]}, r"annotation 5: no segmentation"),
        "RLE of another size": (samkit.mask_utils.mask_to_rle(np.ones((10, 10), bool)), {},
                                r"annotation 5: the RLE mask is 10x10 pixels but the image is 256x256"),
    }
    for case, (segmentation, extra, message) in cases.items():
        path = write_coco(tmp_path / "teacher.json", "chip.png", segmentation, **extra)
        with pytest.raises(DatasetError, match=message):
            read_coco(path)
    # the image's header contradicts the JSON
    with pytest.raises(DatasetError, match=r"image 1 \(chip.png\): the file is 256x256 pixels but the JSON says 300x"):
        read_coco(write_coco(tmp_path / "teacher.json", "chip.png", SQUARE, size=(256, 300)))
    # a class filter that matches nothing names the classes there are
    path = write_coco(tmp_path / "teacher.json", "chip.png", SQUARE)
    assert len(read_coco(path, classes=["building"])) == 1
    with pytest.raises(DatasetError, match=r"no object has class road; the classes there are: building"):
        read_coco(path, classes=["road"])
    # not COCO at all
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"bad.json is not a readable COCO JSON file"):
        read_coco(tmp_path / "bad.json")


def test_image_that_does_not_open(chip_file, tmp_path):
    # not an image at all: refused when the dataset is read
    (tmp_path / "fake.png").write_bytes(b"this is not a png file")
    with pytest.raises(DatasetError, match=r"image 1 \(fake.png\): the image does not open"):
        read_coco(write_coco(tmp_path / "fake.json", "fake.png", SQUARE))
    # a truncated PNG: refused when the dataset is read (Pillow meets the cut reading its chunks)
    data = chip_file.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"image 1 \(cut.png\): the image does not open"):
        read_coco(write_coco(tmp_path / "cut.json", "cut.png", SQUARE))
    # pixels that fail only when read for training name their image too (a reader's record)
    record = samkit.finetune.LabelledImage(str(tmp_path / "cut.png"), (), "my-source: tile 7", (CHIP, CHIP))
    with pytest.raises(DatasetError, match=r"my-source: tile 7: the image does not open: .*cut.png is corrupt"):
        record.load()

    def failing_read():
        raise OSError("the server went away")

    record = samkit.finetune.LabelledImage(failing_read, (), "my-source: tile 8")
    with pytest.raises(DatasetError, match=r"my-source: tile 8: the image does not open: OSError: the server went"):
        record.load()


def test_yolo_errors(chip_file, tmp_path):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    shutil.copy(chip_file, root / "images" / "a.png")
    label = root / "labels" / "a.txt"
    for line, message in (
        ("0 0.5 0.5 0.2 0.2", r"a.txt line 1: a detection box"),
        ("0 0.1 0.1 1.5 0.1 1.5 0.5", r"a.txt line 1: polygon 0 reaches outside the 256x256 image"),
        ("0 0.1 0.1 0.1 0.1 0.1 0.1", r"a.txt line 1: the polygon covers no pixel"),
        ("zero 0.1 0.1 0.5 0.1 0.5 0.5", r"a.txt line 1: not 'class x1 y1"),
    ):
        label.write_text(line + "\n")
        with pytest.raises(DatasetError, match=message):
            read_yolo(root)
    label.write_text("3 0.1 0.1 0.5 0.1 0.5 0.5\n")
    assert read_yolo(root)[0].objects[0].label == "3"  # no names: class numbers
    with pytest.raises(DatasetError, match=r"no object has class 0; the classes there are: 3"):
        read_yolo(root, classes=["0"])
    with pytest.raises(DatasetError, match=r"no images/ folder"):
        read_yolo(tmp_path)


def test_validation_split_is_seeded_and_disjoint(footprint_datasets):
    records = read_coco(footprint_datasets[0])
    train, val = split_validation(records, 0.25, seed=3)
    assert len(val) == 1 and len(train) == len(records) - 1
    assert {r.name for r in train}.isdisjoint({r.name for r in val})
    assert [r.name for r in split_validation(records, 0.25, seed=3)[1]] == [r.name for r in val]
    assert {r.name for s in range(8) for r in split_validation(records, 0.25, seed=s)[1]} != {val[0].name}
    with pytest.raises(DatasetError, match=r"only 1 labelled image: a validation set cannot be split off"):
        split_validation(records[:1], 0.2, seed=0)


def test_bad_data_stops_a_run_before_any_output(chip_file, tmp_path, mobile_sam_checkpoint, capsys):
    """A run whose image does not decode fails with one line naming it; no output is written."""
    from samkit.cli import main

    data = chip_file.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    coco = write_coco(tmp_path / "cut.json", "cut.png", SQUARE)
    output = tmp_path / "out" / "tuned.pt"
    code = main(["finetune", "--model", str(mobile_sam_checkpoint), "--train", str(coco), "--val", str(coco),
                 "--epochs", "1", "--output", str(output), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("samkit: error: cut.json: image 1 (cut.png): the image does not open")
    assert not output.exists() and not list(output.parent.glob("tuned*.json"))
    # an existing output is not replaced without --overwrite
    output.parent.mkdir()
    output.write_bytes(b"old")
    code = main(["finetune", "--model", str(mobile_sam_checkpoint), "--train", str(coco), "--epochs", "1",
                 "--output", str(output), "-q"])
    assert code == 2 and "exists; choose another output or pass overwrite=True" in capsys.readouterr().err
    assert output.read_bytes() == b"old"
