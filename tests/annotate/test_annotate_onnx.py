"""The YOLO ONNX detector: letterbox, decoding, class-aware NMS, and the run end to end.

The test detector: no YOLO weights exist here, so a tiny ONNX graph built with onnx.helper
stands in for an Ultralytics export. It takes the real input (1, 3, 640, 640) and returns a
fixed, known YOLO-format output (1, 4 + 3, 8): `output = known + 0 * mean(images)`, with the
class names in the metadata as Ultralytics writes them. It is used only for what does not depend
on the network: letterboxing, decoding, thresholds, NMS, class filter, max_det, mapping boxes
back to the image. Every expected box below is computed by hand.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import samkit
from annotate_helpers import iou, sam_masks, yolo_masks
from samkit.annotate.detectors.base import DetectOptions
from samkit.annotate.detectors.yolo_onnx import YoloOnnx, decode, letterbox

NAMES = "{0: 'person', 1: 'car', 2: 'dog'}"

# Candidates in the 640x640 letterboxed frame: cx, cy, w, h, then the scores of person, car, dog.
CANDIDATES = np.array([
    [320, 320, 160, 80, 0.10, 0.05, 0.90],  # A: dog 0.9
    [330, 320, 160, 80, 0.00, 0.00, 0.80],  # B: dog 0.8, IoU 0.882 with A: suppressed at iou 0.45
    [330, 320, 160, 80, 0.70, 0.00, 0.00],  # C: person 0.7, same place as B: another class, kept
    [100, 200, 50, 100, 0.00, 0.20, 0.00],  # D: car 0.2 < conf 0.25: dropped
    [500, 450, 100, 60, 0.00, 0.60, 0.00],  # E: car 0.6
    [600, 110, 120, 40, 0.30, 0.00, 0.00],  # F: person 0.3, partly over the top padding: clipped
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
], dtype=np.float32)

# dog.jpg is 800x534: gain min(640/800, 640/534) = 0.8, resized to 640x427, padded (640 - 427) / 2
# = 106.5 -> 106 rows on top, 107 below, none left. A box (cx, cy, w, h) in the letterboxed frame
# is ((cx - w/2 - 0, cy - h/2 - 106, cx + w/2 - 0, cy + h/2 - 106) / 0.8, clipped to 800x534.
EXPECTED = {  # letter: (class, score, box in dog.jpg's pixels)
    "A": (2, 0.9, [300.0, 217.5, 500.0, 317.5]),  # (240, 280, 400, 360) - (0, 106), / 0.8
    "B": (2, 0.8, [312.5, 217.5, 512.5, 317.5]),  # (250, 280, 410, 360)
    "C": (0, 0.7, [312.5, 217.5, 512.5, 317.5]),  # (250, 280, 410, 360)
    "E": (1, 0.6, [562.5, 392.5, 687.5, 467.5]),  # (450, 420, 550, 480)
    "F": (0, 0.3, [675.0, 0.0, 800.0, 30.0]),  # (540, 90, 660, 130): y0 -20 -> 0
}


def yolo_graph(path, output: np.ndarray, input_shape=(1, 3, 640, 640), names: str | None = NAMES):
    """Write the test detector: `output` (1, 4 + nc, N) whatever the image."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["known", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "yolo_test_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(output.astype(np.float32), "known"),
                     numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if names is not None:
        helper.set_model_props(model, {"names": names, "imgsz": "[640, 640]", "task": "detect"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    return yolo_graph(tmp_path_factory.mktemp("onnx") / "yolo11n.onnx", CANDIDATES.T[None])


def detect(path, image, **options):
    detector = YoloOnnx(path, DetectOptions(**options))
    return detector, detector.detect(image, None)


def as_rows(dets):
    return [(int(c), round(float(s), 4), [round(float(v), 4) for v in b])
            for c, s, b in zip(dets.class_ids, dets.scores, dets.boxes)]


def expected(*letters):
    return [(EXPECTED[k][0], EXPECTED[k][1], EXPECTED[k][2]) for k in letters]


def test_letterbox_matches_ultralytics_layout(images_dir):
    image = samkit.load_image(images_dir / "dog.jpg")  # 800x534
    box = letterbox(image, (640, 640))
    assert box.tensor.shape == (1, 3, 640, 640) and box.tensor.dtype == np.float32
    assert box.gain == pytest.approx(0.8) and box.pad == (0.0, 106.0)
    grey = np.float32(114 / 255)
    assert (box.tensor[0, :, :106] == grey).all() and (box.tensor[0, :, 533:] == grey).all()
    resized = cv2.resize(image, (640, 427), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) / np.float32(255)
    assert np.array_equal(box.tensor[0, :, 106:533], resized)  # RGB, [0, 1], not BGR


def test_decoding_against_hand_computed_boxes(detector_file, images_dir):
    image = samkit.load_image(images_dir / "dog.jpg")
    detector, dets = detect(detector_file, image)
    assert detector.names == {0: "person", 1: "car", 2: "dog"}  # from the export's metadata
    assert as_rows(dets) == expected("A", "C", "E", "F")  # D under conf, B suppressed by A (same class)
    assert as_rows(detect(detector_file, image, iou=0.9)[1]) == expected("A", "B", "C", "E", "F")
    assert as_rows(detect(detector_file, image, conf=0.5)[1]) == expected("A", "C", "E")
    assert as_rows(detect(detector_file, image, classes=(0, 1))[1]) == expected("C", "E", "F")
    assert as_rows(detect(detector_file, image, max_det=2)[1]) == expected("A", "C")


def test_export_with_nms_and_a_dynamic_input(tmp_path, images_dir):
    image = samkit.load_image(images_dir / "dog.jpg")
    # an export with NMS (nms=True / end-to-end): (1, N, 6) x0, y0, x1, y1, score, class
    rows = np.array([[240, 280, 400, 360, 0.9, 2], [450, 420, 550, 480, 0.6, 1], [0, 0, 10, 10, 0.1, 0]],
                    dtype=np.float32)
    box = letterbox(image, (640, 640))
    dets = decode(rows[None], box, 800, 534, DetectOptions(), {0: "person", 1: "car", 2: "dog"})
    assert as_rows(dets) == expected("A", "E")
    # a graph without a fixed input size letterboxes to imgsz
    dynamic = yolo_graph(tmp_path / "dynamic.onnx", CANDIDATES.T[None], input_shape=(1, 3, "height", "width"),
                         names=None)
    detector = YoloOnnx(dynamic, DetectOptions(imgsz=320))
    assert detector.input_size() == (320, 320) and detector.names == {}
    dets = detector.detect(image, None)
    # gain 0.4, 320x214 padded by 53 on top: A's (240, 280, 400, 360) -> (600, 567.5, 1000, 767.5), clipped
    # to the image (a box the later filters drop: it has no height left)
    assert as_rows(dets)[0] == (2, 0.9, [600.0, 534.0, 800.0, 534.0])


def test_onnx_detector_end_to_end(detector_file, images_dir, sam_predictor, tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    (data / "dog.jpg").write_bytes((images_dir / "dog.jpg").read_bytes())
    summary = samkit.auto_annotate(data, detector_file, sam_model=sam_predictor, output_dir=tmp_path / "out",
                                   progress=False)
    assert summary.objects == 4 and summary.boxes == 4
    image = samkit.load_image(data / "dog.jpg")
    classes, masks = yolo_masks(tmp_path / "out" / "dog.txt", 800, 534)
    assert classes == [2, 0, 1, 0]
    want, _ = sam_masks(sam_predictor, image, [EXPECTED[k][2] for k in "ACEF"])
    assert min(iou(a, b) for a, b in zip(masks, want)) >= 0.9
    assert '2: "dog"' in (tmp_path / "out" / "data.yaml").read_text()
