"""Fine-tuning on a FiftyOne label field: `samkit.fiftyone.finetune(view, "ground_truth", ...)`.

Format translation only: each sample with labels in the field becomes one samkit.finetune
LabelledImage. Detections need instance masks (`mask` or `mask_path`; FiftyOne renders each into
the full frame); Polylines must be closed or filled polygons (their relative vertices become
pixel polygons, checked as every reader's are). samkit.finetune does the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import samkit
from samkit.finetune import LabelledImage, object_from_mask, object_from_polygons, select_classes
from samkit.finetune.data import image_size


def labelled_images(view, label_field: str, classes=None) -> list[LabelledImage]:
    """The samples of `view` with objects in `label_field` (Detections with masks, or Polylines)
    as LabelledImages; `classes`: the labels to keep."""
    import fiftyone.core.labels as fol

    field = view.get_field(label_field) if label_field else None
    if field is None:
        raise samkit.DatasetError(f"the collection has no field {label_field!r} to fine-tune on")
    kind = getattr(field, "document_type", None)
    if kind not in (fol.Detections, fol.Polylines):
        raise samkit.DatasetError(
            f"'{label_field}' holds {getattr(kind, '__name__', type(field).__name__)}; fine-tuning reads "
            "Detections with instance masks or Polylines"
        )
    source = view.dataset_name if hasattr(view, "dataset_name") else "view"
    records = []
    for sample in view.select_fields(label_field).iter_samples(progress=False):
        labels = sample[label_field]
        items = getattr(labels, "detections" if kind is fol.Detections else "polylines", None) if labels else None
        if not items:
            continue
        where = f"{source}: sample {sample.id} ({Path(sample.filepath).name})"
        metadata = sample.metadata
        if metadata is not None and metadata.width and metadata.height:
            size = (int(metadata.height), int(metadata.width))
        else:
            size = image_size(Path(sample.filepath), where)
        objects = []
        for index, item in enumerate(items):
            name = f"{label_field}[{index}] ({item.label})"
            if kind is fol.Detections:
                if not item.has_mask:
                    raise samkit.DatasetError(f"{where}, {name}: the detection has no instance mask (a box only); "
                                              "fine-tuning needs masks (samkit's segment_prompts can add them)")
                mask = item.to_segmentation(frame_size=(size[1], size[0]), target=1).mask
                objects.append(object_from_mask(mask, item.label, name, where))
            else:
                if not (item.closed or item.filled):
                    raise samkit.DatasetError(f"{where}, {name}: an open polyline is a line, not an object; "
                                              "fine-tuning needs closed or filled polygons")
                polygons = [[(x * size[1], y * size[0]) for x, y in shape] for shape in item.points if shape]
                objects.append(object_from_polygons(polygons, size, item.label, name, where))
        records.append(LabelledImage(sample.filepath, tuple(objects), where, size))
    if not records:
        raise samkit.DatasetError(f"{source}: no sample of the view has objects in '{label_field}'")
    return select_classes(records, classes, f"{source}.{label_field}")


def finetune(view, label_field: str, output: str | os.PathLike, *, model: str = "mobile_sam", val_view=None,
             classes=None, **options):
    """Fine-tune `model` on the objects of `view`'s `label_field` and write `output` (a checkpoint
    the other operators and SamModel(model=output) use); `val_view`: samples to validate on
    (default: a share of the view's samples held out). Options and the result: samkit.finetune's."""
    train = labelled_images(view, label_field, classes)
    val = labelled_images(val_view, label_field, classes) if val_view is not None else None
    return samkit.finetune(model, train, output, val, **options)
