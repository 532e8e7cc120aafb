"""Fine-tuning from FiftyOne: the label-field reader on a real dataset (Kampala chips with their
OSM footprints as Detections with instance masks and as Polylines), its errors, and the
"SAM: fine-tune on a label field" operator run delegated by a worker, whose checkpoint the
segment_prompts operator and SamModel then use."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_data import CHIP, polygon_rings
from PIL import Image

import fiftyone as fo
import fiftyone.core.labels as fol
import fiftyone.operators as foo

import samkit
from samkit.finetune import decode_mask
from samkit.fiftyone import labelled_images

FINETUNE = "@samkit/fiftyone/finetune"
PROMPTS = "@samkit/fiftyone/segment_prompts"
WORKER = (
    "import sys\n"
    "from fiftyone.operators.delegated import DelegatedOperationService\n"
    "DelegatedOperationService().execute_queued_operations(dataset_name=sys.argv[1], log=True)\n"
)


def footprint_mask(part) -> np.ndarray:
    from rasterio.features import rasterize

    return rasterize([part], out_shape=(CHIP, CHIP)).astype(bool)


@pytest.fixture()
def kampala_dataset(kampala_chips, make_dataset, tmp_path):
    """Four chips; "gt": Detections with instance masks (the footprints rasterised); "outlines":
    the same footprints as closed Polylines."""
    files = []
    for chip in kampala_chips[:4]:
        Image.fromarray(chip.image).save(tmp_path / chip.name)
        files.append(str(tmp_path / chip.name))
    dataset = make_dataset(files)
    for sample, chip in zip(dataset.iter_samples(autosave=True), kampala_chips[:4]):
        detections, polylines = [], []
        for part in chip.footprints:
            detections.append(fol.Detection.from_mask(footprint_mask(part), label="building"))
            points = [[(x / CHIP, y / CHIP) for x, y in ring] for ring in polygon_rings(part)]
            polylines.append(fol.Polyline(label="building", points=points, closed=True, filled=True))
        sample["gt"] = fol.Detections(detections=detections)
        sample["outlines"] = fol.Polylines(polylines=polylines)
    return dataset, kampala_chips[:4]


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_label_fields_read_as_training_records(kampala_dataset):
    dataset, chips = kampala_dataset
    for field, floor in (("gt", 0.999), ("outlines", 0.85)):
        records = labelled_images(dataset, field)
        assert [Path(r.image).name for r in records] == [c.name for c in chips if c.footprints]
        for record, chip in zip(records, chips):
            assert record.size == (CHIP, CHIP) and len(record.objects) == len(chip.footprints)
            assert record.objects[0].name == f"{field}[0] (building)"
            for obj, part in zip(record.objects, chip.footprints):
                assert iou(decode_mask(obj), footprint_mask(part)) >= floor, (field, obj.name)
    with pytest.raises(samkit.DatasetError, match=r"no object has class road; the classes there are: building"):
        labelled_images(dataset, "gt", classes=["road"])


def test_reader_errors_name_the_sample(kampala_dataset):
    dataset, _ = kampala_dataset
    sample = dataset.first()
    sample["boxes"] = fol.Detections(detections=[fol.Detection(label="building", bounding_box=[0.1, 0.1, 0.2, 0.2])])
    sample["lines"] = fol.Polylines(polylines=[fol.Polyline(label="road", points=[[(0.1, 0.1), (0.5, 0.5)]])])
    sample.save()
    where = rf"sample {sample.id} \({Path(sample.filepath).name}\)"
    with pytest.raises(samkit.DatasetError, match=where + r", boxes\[0\] \(building\): the detection has no instance"):
        labelled_images(dataset, "boxes")
    with pytest.raises(samkit.DatasetError, match=where + r", lines\[0\] \(road\): an open polyline is a line"):
        labelled_images(dataset, "lines")
    with pytest.raises(samkit.DatasetError, match=r"no field 'nothing'"):
        labelled_images(dataset, "nothing")


def test_finetune_operator_delegated_then_used(kampala_dataset, checkpoint, fiftyone_env, tmp_path):
    import subprocess

    dataset, chips = kampala_dataset
    # two chips are enough: the worker trains on one and holds the other out; each chip more is
    # an embedding more in the worker and in segment_prompts
    dataset.delete_samples(dataset.skip(2))
    assert len(dataset) == 2
    output = tmp_path / "tuned.pt"
    params = dict(label_field="gt", output=str(output), model=checkpoint, epochs=1, batch_size=8, val_fraction=0.25)
    queued = foo.execute_operator(FINETUNE, ctx={"dataset": dataset, "params": params, "request_delegation": True})
    assert queued.delegated
    proc = subprocess.run([sys.executable, "-c", WORKER, dataset.name], env=fiftyone_env(), capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from fiftyone.operators.delegated import DelegatedOperationService

    from fiftyone.operators.executor import ExecutionRunState

    operation = DelegatedOperationService().get(queued.result["id"])
    assert operation.run_state == ExecutionRunState.COMPLETED, operation.result
    result = operation.result.result
    assert result["checkpoint"] == str(output) and result["best_epoch"] in (0, 1), result
    assert result["miou_box_before"] is not None and "held-out mIoU from a box" in result["message"]
    # the checkpoint holds a changed decoder and the other operators take it as their model
    base = torch.load(checkpoint, map_location="cpu", weights_only=True)
    tuned = torch.load(output, map_location="cpu", weights_only=True)
    assert list(tuned) == list(base)
    run = foo.execute_operator(PROMPTS, ctx={"dataset": dataset, "params": dict(
        prompt_field="gt", output_field="gt_tuned", model=str(output), skip_existing=False)})
    assert run.result["processed"] == len(dataset) and run.result["failed"] == 0
    model = samkit.load_model(output, device="cpu")
    predictor = samkit.Predictor(model)
    sample = dataset.first()
    predictor.set_image(sample.filepath)
    detection = sample["gt_tuned"].detections[0]
    x, y, w, h = sample["gt"].detections[0].bounding_box
    masks, _, _ = predictor.predict(box=np.array([x * CHIP, y * CHIP, (x + w) * CHIP, (y + h) * CHIP]),
                                    multimask_output=False)
    full = detection.to_segmentation(frame_size=(CHIP, CHIP), target=1).mask.astype(bool)
    assert iou(full, masks[0]) > 0.98
    assert fo.dataset_exists(dataset.name)
