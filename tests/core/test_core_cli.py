"""The `samkit` command (core part): predict, everything, info; outputs and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import samkit
from samkit import mask_utils
from samkit.cli import main


def read_masks(out_dir):
    doc = json.loads((out_dir / "masks.json").read_text())
    return doc, [mask_utils.rle_to_mask(a["segmentation"]) for a in doc["annotations"]]


def test_predict_points_writes_what_the_predictor_gives(mobile_sam, mobile_sam_checkpoint, images_dir, tmp_path,
                                                         capsys):
    image = images_dir / "dog.jpg"
    rc = main(["predict", str(image), "--points", "300,250;500,300", "--labels", "1,0", "--png-masks",
               "--model", str(mobile_sam_checkpoint), "--device", "cpu", "-o", str(tmp_path)])
    assert rc == 0 and "1 masks" in capsys.readouterr().out
    doc, masks = read_masks(tmp_path)
    width, height = Image.open(image).size
    assert (doc["image"]["width"], doc["image"]["height"]) == (width, height)
    predictor = samkit.Predictor(mobile_sam)
    predictor.set_image(image)
    expected, scores, _ = predictor.predict(point_coords=np.array([[300, 250], [500, 300]]),
                                            point_labels=np.array([1, 0]), multimask_output=False)
    assert len(masks) == 1 and np.array_equal(masks[0], expected[0])
    assert doc["annotations"][0]["score"] == pytest.approx(float(scores[0]), abs=1e-6)
    assert doc["annotations"][0]["area"] == int(expected[0].sum())
    assert Image.open(tmp_path / "overlay.png").size == (width, height)
    png = np.asarray(Image.open(tmp_path / "masks" / "mask_0000.png"))
    assert np.array_equal(png > 0, expected[0])


def test_predict_box(mobile_sam, mobile_sam_checkpoint, images_dir, tmp_path):
    image = images_dir / "dog.jpg"
    assert main(["predict", str(image), "--box", "50,40,300,400", "--model", str(mobile_sam_checkpoint),
                 "--device", "cpu", "-o", str(tmp_path)]) == 0
    predictor = samkit.Predictor(mobile_sam)
    predictor.set_image(image)
    expected, _, _ = predictor.predict(box=np.array([50, 40, 300, 400]), multimask_output=False)
    _, masks = read_masks(tmp_path)
    assert len(masks) == 1 and np.array_equal(masks[0], expected[0])


def test_everything_writes_the_generators_records(mobile_sam, mobile_sam_checkpoint, images_dir, tmp_path):
    image = images_dir / "dog.jpg"
    assert main(["everything", str(image), "--points-per-side", "4", "--pred-iou-thresh", "0",
                 "--stability-score-thresh", "0", "--png-masks", "--model", str(mobile_sam_checkpoint),
                 "--device", "cpu", "-o", str(tmp_path)]) == 0
    records = samkit.MaskGenerator(mobile_sam, points_per_side=4, pred_iou_thresh=0,
                                   stability_score_thresh=0).generate(image)
    doc, masks = read_masks(tmp_path)
    # (random weights: NMS leaves few masks, so compare every one exactly)
    assert records and len(masks) == len(records) == len(list((tmp_path / "masks").glob("*.png")))
    by_area = lambda ms: sorted(ms, key=lambda m: (int(m.sum()), m.tobytes()))  # noqa: E731
    for got, want in zip(by_area(masks), by_area([r["segmentation"] for r in records])):
        assert np.array_equal(got, want)


def test_info_prints_the_architecture(mobile_sam_checkpoint, capsys):
    assert main(["info", str(mobile_sam_checkpoint), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "mobile_sam" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "{missing}", "--points", "1,2"], "image file not found"),
        (["predict", "{image}", "--points", "1,2,3"], "--points: expected x,y pairs"),
        (["predict", "{image}", "--points", "1,2;3,4", "--labels", "1"], "2 points but 1 labels"),
        (["predict", "{image}", "--box", "1,2,3"], "--box: expected x0,y0,x1,y1"),
        (["predict", "{image}", "--box", "300,40,50,400"], "x1"),
        (["predict", "{image}", "--points", "5000,5000"], "outside"),
        (["predict", "{image}"], "give --points"),
        (["predict", "{image}", "--points", "1,2", "--model", "sam_vit_q"], "not a known model name"),
        (["predict", "{image}", "--points", "1,2", "--dtype", "float8"], "unsupported dtype"),
        (["everything", "{not_image}"], "not an image"),
    ],
)
def test_errors_are_one_line_and_exit_2(args, message, mobile_sam_checkpoint, images_dir, tmp_path, capsys):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    names = {"missing": str(tmp_path / "missing.jpg"), "image": str(images_dir / "dog.jpg"),
             "not_image": str(not_image)}
    argv = [a.format(**names) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(mobile_sam_checkpoint)]
    rc = main(argv + ["--device", "cpu", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("samkit: error: ") and "\n" not in err and "Traceback" not in err
    assert message.lower() in err.lower(), err
    assert not (tmp_path / "out" / "masks.json").exists()


def test_samkits_own_warning_is_one_line(mobile_sam_checkpoint, capsys):
    assert main(["info", str(mobile_sam_checkpoint), "--device", "cpu", "--dtype", "float16"]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("samkit: warning: float16 on a CPU") and "\n" not in err
