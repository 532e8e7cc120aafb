"""Bulk SAM runs over a FiftyOne sample collection: resumable, per-sample errors, PNG masks.

Each sample is written as soon as it is done, so a run that is stopped (killed worker, closed
App, Ctrl-C) loses at most the sample it was on; run it again with ``skip_existing=True`` (the
default) and only the samples without results (or with an error record) are processed. A
sample that fails (missing or corrupt file, ...) gets the message in ``<label_field>_error`` and
the run goes on; so does a sample some of whose prompts cannot be used (a box of zero size or
outside the image, keypoint labels that do not match its points): its other prompts still get
masks. A later clean run clears the record.

``iter_segment_everything`` / ``iter_segment_prompts`` check their inputs and load the model
eagerly, then return a generator that yields a :class:`Progress` after each sample and returns
the :class:`RunSummary` (the operators stream progress to the App from it);
``segment_everything`` / ``segment_prompts`` drive it and return the summary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Generator, Iterable, Optional

import numpy as np

import fiftyone as fo
import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import fiftyone.core.utils as fou
from fiftyone import ViewField as F

import samkit
from samkit.utils.prefetch import prefetch

from samkit.fiftyone.segmenter import (
    DEFAULT_BOX_BATCH_SIZE,
    DEFAULT_POINT_LABELS_ATTR,
    EVERYTHING_DEFAULTS,
    Segmenter,
    describe_problems,
    tight_crop,
)

logger = logging.getLogger(__name__)

MASK_STORAGE_MODES = ("auto", "inline", "png")
# A sample is one MongoDB document (16 MB at most). In "auto" mode a sample whose serialized
# masks pass this size gets them written as PNG files instead.
INLINE_MASK_LIMIT = 8 * 1024 * 1024
MAX_ERRORS_KEPT = 100
_CHUNK = 16  # samples fetched per query; ids are listed up front so no cursor stays open for hours

ProgressCallback = Callable[["Progress"], None]


@dataclass
class Progress:
    done: int
    total: int
    label: str

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class RunSummary:
    """What a run did. ``errors`` maps sample ids to messages (the first 100): samples that
    failed, and samples with prompts that got no mask."""

    operation: str
    label_field: str
    total: int = 0  # samples in the target collection
    processed: int = 0  # written by this run
    skipped: int = 0  # already done (skip_existing)
    failed: int = 0
    prompt_field: Optional[str] = None
    # samples without prompts: written as an empty Detections (counted in processed), or, when
    # the masks go onto the prompt detections themselves, left as they are
    no_prompts: int = 0
    bad_prompts: int = 0  # prompts that could not be used (no mask made), in...
    bad_prompt_samples: int = 0  # ...this many samples, each with a record in error_field
    stopped: bool = False  # ended early on request (a delegated run marked failed)
    masks: int = 0
    png_samples: int = 0  # samples whose masks went to PNG files
    mask_dir: Optional[str] = None
    error_field: Optional[str] = None
    errors: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MaskWriter:
    """Keeps masks inline or writes them as PNG files (``mask_path``), per ``mode``.

    PNGs go to ``<mask_dir>/<label_field>/<sample id>/<detection id>.png``. ``mask_dir``
    defaults to ``$SAMKIT_MASK_DIR``, else ``<fo.config.default_dataset_dir>/samkit_masks/<dataset>``.
    """

    def __init__(self, mode: str, mask_dir: Optional[str], dataset_name: str, label_field: str,
                 inline_limit: Optional[int] = None) -> None:
        mode = (mode or "auto").lower()
        if mode not in MASK_STORAGE_MODES:
            raise samkit.SamkitError(
                f"mask_storage must be one of {', '.join(MASK_STORAGE_MODES)}, not {mode!r}"
            )
        self.mode = mode
        self._mask_dir = mask_dir
        self.dataset_name = dataset_name
        self.label_field = label_field
        self.inline_limit = INLINE_MASK_LIMIT if inline_limit is None else inline_limit

    @property
    def mask_dir(self) -> str:
        base = self._mask_dir or os.environ.get("SAMKIT_MASK_DIR")
        if not base:
            base = os.path.join(fo.config.default_dataset_dir, "samkit_masks", self.dataset_name)
        return os.path.abspath(os.path.expanduser(base))

    def sample_dir(self, sample_id: str) -> str:
        return os.path.join(self.mask_dir, self.label_field, sample_id)

    def store(self, sample_id: str, detections: Iterable["fol.Detection"], replace: bool) -> bool:
        """Write the masks as PNGs if the mode says so; True if it did. ``replace``: the sample's
        previous masks for this field are gone (new value), so its old PNG folder is removed."""
        detections = [d for d in detections if d.mask is not None]
        use_png = self.mode == "png"
        if self.mode == "auto":
            size = sum(len(fou.serialize_numpy_array(d.mask)) for d in detections)
            use_png = size > self.inline_limit
        folder = self.sample_dir(sample_id)
        if replace and os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
        if not use_png or not detections:
            return False
        os.makedirs(folder, exist_ok=True)
        for det in detections:
            det.export_mask(os.path.join(folder, f"{det.id}.png"), update=True)
        return True


def drive(gen: Generator[Progress, None, RunSummary], progress: Optional[ProgressCallback]) -> RunSummary:
    while True:
        try:
            update = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(update)


def _check_collection(samples) -> None:
    if not isinstance(samples, fo.core.collections.SampleCollection):
        raise samkit.SamkitError(
            f"expected a FiftyOne Dataset or DatasetView, got {type(samples).__name__}"
        )
    if samples.media_type != fo.core.media.IMAGE:
        raise samkit.SamkitError(
            f"samkit segments images; this collection's media type is {samples.media_type!r} "
            "(for videos, run on view.to_frames(sample_frames=True); for groups, select an image slice)"
        )


def check_output_field(samples, label_field: str, what: str = "output field") -> None:
    if not label_field or not isinstance(label_field, str):
        raise samkit.SamkitError(f"the {what} name is empty; name a field to write the masks into")
    if label_field.startswith("frames.") or "." in label_field:
        raise samkit.SamkitError(f"the {what} must be a top-level sample field, not {label_field!r}")
    existing = samples.get_field(label_field)
    if existing is None:
        return
    doc_type = getattr(existing, "document_type", None)
    if not (isinstance(existing, fof.EmbeddedDocumentField) and doc_type is not None
            and issubclass(doc_type, fol.Detections)):
        raise samkit.SamkitError(
            f"field {label_field!r} already exists and holds {_field_kind(existing)}, not Detections; "
            "choose another output field"
        )


def check_view_keeps(samples, field_names: Iterable[str]) -> None:
    """A field the dataset has but the view leaves out (select_fields / exclude_fields) can be
    neither read nor written through the view: say so instead of failing mid-run."""
    dataset = samples._root_dataset
    for name in field_names:
        if name and dataset.has_field(name) and not samples.has_field(name):
            raise samkit.SamkitError(
                f"the view leaves out the field {name!r} (select_fields/exclude_fields), which the "
                f"dataset has: add {name!r} to the view's fields, or write to a new field"
            )


def _field_kind(field_obj) -> str:
    doc_type = getattr(field_obj, "document_type", None)
    return doc_type.__name__ if doc_type is not None else type(field_obj).__name__


def prompt_kind(samples, prompt_field: str) -> str:
    """"boxes" for a Detections field, "points" for a Keypoints field; else a clear error."""
    if not prompt_field:
        raise samkit.PromptError("no prompt field given; name a Detections (boxes) or Keypoints (points) field")
    field_obj = samples.get_field(prompt_field)
    if field_obj is None:
        raise samkit.PromptError(
            f"the collection has no field {prompt_field!r}; prompts come from a Detections (boxes) "
            "or Keypoints (points) field"
        )
    doc_type = getattr(field_obj, "document_type", None)
    if isinstance(field_obj, fof.EmbeddedDocumentField) and doc_type is not None:
        if issubclass(doc_type, fol.Detections):
            return "boxes"
        if issubclass(doc_type, fol.Keypoints):
            return "points"
    raise samkit.PromptError(
        f"prompt field {prompt_field!r} holds {_field_kind(field_obj)}; SAM prompts come from a "
        "Detections field (boxes) or a Keypoints field (points)"
    )


@dataclass
class _Result:
    """One sample's new labels and what went into them."""

    labels: "fol.Detections"
    masks: int
    no_prompts: bool = False
    problem: Optional[str] = None  # the sample's unusable prompts, one line
    bad_prompts: int = 0


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if "DocumentTooLarge" in message or "too large" in text.lower():
        message += " (the masks exceed MongoDB's 16 MB per sample: use mask_storage 'png' or 'auto')"
    return message


def _todo_samples(samples, todo_ids: list[str], select: list[str]) -> Iterable[Any]:
    """The samples to process, _CHUNK per query, from the target view itself, so that its
    label filters apply (prompts the user filtered out are not used, and saving merges the
    visible labels back)."""
    for start in range(0, len(todo_ids), _CHUNK):
        yield from samples.select(todo_ids[start : start + _CHUNK], ordered=True).select_fields(select)


def _process(
    summary: RunSummary,
    samples,
    todo_ids: list[str],
    select: list[str],
    wants_image: Callable[[Any], bool],  # sample -> whether compute needs its image
    compute: Callable[[Any, Optional[np.ndarray]], _Result],  # (sample, its image or None) -> its new labels
    write: Callable[[Any, "fol.Detections"], None],
    error_field: str,
    stop_requested: Optional[Callable[[], bool]] = None,
) -> Generator[Progress, None, None]:
    dataset = samples._root_dataset
    had_error_field = dataset.has_field(error_field)
    # A view may leave out the error field (select_fields): then it is cleared through the dataset.
    error_in_view = had_error_field and samples.has_field(error_field)
    select = [f for f in dict.fromkeys(select + ([error_field] if error_in_view else [])) if samples.has_field(f)]
    total = summary.total
    done = total - len(todo_ids)
    cleared = []

    def load(item) -> Optional[np.ndarray]:
        _, path = item
        return samkit.load_image(path) if path is not None else None

    def clear_errors() -> None:
        if cleared:
            dataset.select(cleared).set_values(error_field, [None] * len(cleared))
            cleared.clear()

    # the next sample's image is read and decoded while the model works on this one
    items = ((s, s.filepath if wants_image(s) else None) for s in _todo_samples(samples, todo_ids, select))
    with contextlib.closing(prefetch(items, load)) as loaded:
        for (sample, _), image in loaded:
            if stop_requested is not None and stop_requested():
                summary.stopped = True
                break
            try:
                result = compute(sample, image.result())
                write(sample, result.labels)
                if error_in_view and sample[error_field] is not None and result.problem is None:
                    sample[error_field] = None
                sample.save()
                if had_error_field and not error_in_view and result.problem is None:
                    cleared.append(sample.id)
                summary.processed += 1
                summary.masks += result.masks
                summary.no_prompts += result.no_prompts
                if result.problem is not None:
                    summary.bad_prompts += result.bad_prompts
                    summary.bad_prompt_samples += 1
                    _record(summary, dataset, sample, error_field, result.problem)
            except Exception as exc:  # one sample's failure is recorded; the run goes on
                summary.failed += 1
                _record(summary, dataset, sample, error_field, _describe(exc), failed=True)
            done += 1
            if len(cleared) >= _CHUNK:
                clear_errors()
            yield Progress(done, total, f"{summary.operation}: {done}/{total} samples"
                           + (f", {summary.failed} failed" if summary.failed else ""))
    clear_errors()


def _record(summary: RunSummary, dataset, sample, error_field: str, message: str, failed: bool = False) -> None:
    """Keep a sample's error message in the summary, the log and its error field."""
    if len(summary.errors) < MAX_ERRORS_KEPT:
        summary.errors[sample.id] = message
    if failed:
        logger.warning("samkit: sample %s (%s) failed: %s", sample.id, sample.filepath, message)
    else:
        logger.warning("samkit: %s (%s)", message, sample.filepath)
    try:
        dataset.select(sample.id).set_values(error_field, [message])
    except Exception:  # the error record must not end the run either
        logger.exception("samkit: could not record the error of sample %s", sample.id)


def _plan(summary: RunSummary, todo, nothing_to_do: str) -> list[str]:
    """The ids of the samples to process; counts the others as skipped, except those already
    counted in ``summary.no_prompts``."""
    todo_ids = todo.values("id")
    summary.skipped = summary.total - len(todo_ids) - summary.no_prompts
    if summary.total == 0:
        summary.message = "the target view is empty: nothing to segment"
    elif not todo_ids:
        summary.message = nothing_to_do
    return todo_ids


def _run(summary: RunSummary, samples, todo_ids, select, wants_image, compute, write, error_field: str,
         started: float, stop_requested: Optional[Callable[[], bool]] = None) -> Generator[Progress, None, RunSummary]:
    yield Progress(summary.total - len(todo_ids), summary.total, f"{summary.operation}: {len(todo_ids)} samples to do")
    yield from _process(summary, samples, todo_ids, select, wants_image, compute, write, error_field, stop_requested)
    return _finish(summary, samples, summary.label_field, started)


def _finished(summary: RunSummary, samples, label_field: str, started: float) -> Generator[Progress, None, RunSummary]:
    """A job with nothing to do, as a generator like the others."""
    return _finish(summary, samples, label_field, started)
    yield  # pragma: no cover  (makes this a generator)


def _finish(summary: RunSummary, samples, label_field: str, started: float) -> RunSummary:
    summary.elapsed_s = round(time.monotonic() - started, 3)
    if summary.processed:
        try:  # show predicted_iou / stability_score / area in the App's sidebar filters
            samples._root_dataset.add_dynamic_sample_fields(fields=[label_field])
        except Exception:
            logger.debug("could not declare dynamic attributes of %s", label_field, exc_info=True)
    if not summary.message:
        summary.message = _message(summary, label_field)
    logger.info("samkit: %s", summary.message)
    return summary


def _message(summary: RunSummary, label_field: str) -> str:
    parts = [f"{summary.processed} samples written to '{label_field}' ({summary.masks} masks)"]
    if summary.no_prompts:
        if summary.prompt_field == label_field:  # masks onto the prompt detections: none to add to
            parts.append(f"{summary.no_prompts} had no prompts in '{summary.prompt_field}' (left as they were)")
        else:
            parts.append(f"{summary.no_prompts} of them had no prompts in '{summary.prompt_field}' "
                         "(written as an empty Detections)")
    parts.append(f"{summary.skipped} skipped (already done)")
    parts.append(f"{summary.failed} failed")
    if summary.bad_prompts:
        parts.append(f"{summary.bad_prompts} unusable prompts in {summary.bad_prompt_samples} samples got no mask")
    if summary.failed or summary.bad_prompts:
        parts[-1] += f" (see the '{summary.error_field}' field)"
    return (("stopped on request: " if summary.stopped else "") + ", ".join(parts)
            + f", in {summary.elapsed_s:.1f} s")


def _start_run(kind, samples, label_field, error_field, mask_storage, mask_dir):
    """The checks and records every run that writes one label field starts with: the collection,
    the output field (and that the view keeps it), the error field's name, a MaskWriter and the
    RunSummary. Raises before anything is written."""
    _check_collection(samples)
    check_output_field(samples, label_field)
    check_view_keeps(samples, [label_field])
    error_field = error_field or f"{label_field}_error"
    writer = MaskWriter(mask_storage, mask_dir, samples._root_dataset.name, label_field)
    return writer, RunSummary(kind, label_field, total=len(samples), error_field=error_field)


def iter_segment_everything(
    samples,
    label_field: str = "sam",
    model: Any = None,
    device: Optional[str] = None,
    points_per_side: int = EVERYTHING_DEFAULTS["points_per_side"],
    points_per_batch: int = EVERYTHING_DEFAULTS["points_per_batch"],
    pred_iou_thresh: Optional[float] = EVERYTHING_DEFAULTS["pred_iou_thresh"],
    stability_score_thresh: float = EVERYTHING_DEFAULTS["stability_score_thresh"],
    box_nms_thresh: float = EVERYTHING_DEFAULTS["box_nms_thresh"],
    crop_n_layers: int = EVERYTHING_DEFAULTS["crop_n_layers"],
    min_mask_region_area: int = EVERYTHING_DEFAULTS["min_mask_region_area"],
    max_masks: Optional[int] = None,
    skip_existing: bool = True,
    mask_storage: str = "auto",
    mask_dir: Optional[str] = None,
    error_field: Optional[str] = None,
    stop_requested: Optional[Callable[[], bool]] = None,
    dtype: Optional[str] = None,
) -> Generator[Progress, None, RunSummary]:
    """:func:`segment_everything` as a job: checks the inputs, lists the samples to do and loads
    the model now (errors raise here), then returns a generator that yields a :class:`Progress`
    per sample and returns the :class:`RunSummary`. ``stop_requested``: checked before each
    sample; True ends the run early (``RunSummary.stopped``)."""
    started = time.monotonic()
    writer, summary = _start_run("segment_everything", samples, label_field, error_field, mask_storage, mask_dir)
    error_field = summary.error_field

    todo = samples
    if skip_existing and samples.has_field(label_field):
        todo = samples.exists(label_field, False)
    todo_ids = _plan(summary, todo, f"all {summary.total} samples already have '{label_field}': nothing to do")
    if not todo_ids:
        return _finished(summary, samples, label_field, started)

    options = dict(
        points_per_side=int(points_per_side), points_per_batch=int(points_per_batch),
        pred_iou_thresh=None if pred_iou_thresh is None else float(pred_iou_thresh),
        stability_score_thresh=float(stability_score_thresh),
        box_nms_thresh=float(box_nms_thresh), crop_n_layers=int(crop_n_layers),
        min_mask_region_area=int(min_mask_region_area),
    )
    segmenter = Segmenter(model, device, everything_options=options, max_masks=max_masks, dtype=dtype)

    def write(sample, labels):
        if writer.store(sample.id, labels.detections, replace=True):
            summary.png_samples += 1
            summary.mask_dir = writer.mask_dir
        sample[label_field] = labels

    def compute(sample, image):
        labels = segmenter.everything(image)
        return _Result(labels, segmenter.last_masks)

    return _run(summary, samples, todo_ids, [label_field], lambda sample: True, compute, write, error_field, started,
                stop_requested)


def segment_everything(samples, label_field: str = "sam", model: Any = None, *,
                       progress: Optional[ProgressCallback] = None, **options) -> RunSummary:
    """Segment everything in each image of ``samples`` into ``label_field`` (``fo.Detections``).

    Each detection has a box-relative ``mask``, ``confidence`` = SAM's predicted IoU clamped to [0, 1], and the
    attributes ``predicted_iou``, ``stability_score`` and ``area`` (pixels). Options:
    ``points_per_side``, ``points_per_batch`` (prompts decoded at once), ``pred_iou_thresh``,
    ``stability_score_thresh``, ``box_nms_thresh``, ``crop_n_layers``, ``min_mask_region_area``
    (``samkit.GeneratorOptions``' names and defaults; ``pred_iou_thresh`` None: the model family's),
    ``max_masks`` (best by predicted IoU), ``skip_existing`` (resume: default True),
    ``mask_storage`` ("auto", "inline", "png"), ``mask_dir``, ``error_field``, ``device``, ``dtype``.
    ``model``: a name ("mobile_sam", "vit_b", ...), a checkpoint path or a loaded ``samkit.Sam``;
    default ``$SAMKIT_CHECKPOINT``, else ``$SAMKIT_MODEL``, else mobile_sam.
    """
    return drive(iter_segment_everything(samples, label_field, model, **options), progress)


def iter_segment_prompts(
    samples,
    prompt_field: Optional[str],
    label_field: Optional[str] = None,
    model: Any = None,
    device: Optional[str] = None,
    batch_size: int = DEFAULT_BOX_BATCH_SIZE,
    point_labels_attr: str = DEFAULT_POINT_LABELS_ATTR,
    skip_existing: bool = True,
    mask_storage: str = "auto",
    mask_dir: Optional[str] = None,
    error_field: Optional[str] = None,
    stop_requested: Optional[Callable[[], bool]] = None,
    dtype: Optional[str] = None,
    text: Any = None,
    det_model: Optional[str] = None,
    box_threshold: float = 0.25,
    text_threshold: float = 0.25,
) -> Generator[Progress, None, RunSummary]:
    """:func:`segment_prompts` as a job (see :func:`iter_segment_everything`)."""
    if text:  # the prompts are the boxes a text detector finds: segment_text's job
        if prompt_field:
            raise samkit.PromptError(f"give a prompt field or text, not both: '{prompt_field}' and {text!r}")
        return iter_segment_text(samples, text, label_field or "sam_text", det_model, model, device,
                                 box_threshold=box_threshold, text_threshold=text_threshold,
                                 skip_existing=skip_existing, mask_storage=mask_storage, mask_dir=mask_dir,
                                 error_field=error_field, stop_requested=stop_requested, dtype=dtype)
    if not prompt_field:
        raise samkit.PromptError("give a prompt field (Detections or Keypoints) or text to find the objects by")
    started = time.monotonic()
    _check_collection(samples)
    kind = prompt_kind(samples, prompt_field)
    in_place = not label_field or label_field == prompt_field
    if in_place and kind == "points":
        raise samkit.PromptError(
            f"'{prompt_field}' holds Keypoints, which cannot carry masks; give an output field "
            "for the new Detections"
        )
    target = prompt_field if in_place else label_field
    if not in_place:
        check_output_field(samples, target)
        check_view_keeps(samples, [target])
    error_field = error_field or f"{target}_error"
    writer = MaskWriter(mask_storage, mask_dir, samples._root_dataset.name, target)
    summary = RunSummary("segment_prompts", target, total=len(samples), error_field=error_field,
                         prompt_field=prompt_field)

    list_field = f"{prompt_field}.{'detections' if kind == 'boxes' else 'keypoints'}"
    has_prompts = F(list_field).length() > 0
    if in_place:
        # masks go onto the prompt detections: a sample without any has nothing to write, and
        # its prompt field (None or empty) is the user's and stays as it is
        todo = samples.match(has_prompts)
        summary.no_prompts = summary.total - todo.count()
        if skip_existing:
            missing = (F("mask") == None) & (F("mask_path") == None)  # noqa: E711 (a query)
            todo = todo.match(F(list_field).filter(missing).length() > 0)
    else:
        # every sample gets a value, an empty Detections when it has no prompts, as apply_model
        # writes: "processed, nothing to segment" stays distinguishable from "not processed"
        todo = samples
        if skip_existing and samples.has_field(target):
            redo = ~F(target).exists()
            # an empty result whose sample has prompts by now (added after the run), or a sample
            # with an error record (bad prompts since fixed), is not done
            redo = redo | ((F(f"{target}.detections").length() == 0) & has_prompts)
            if samples.has_field(error_field):
                redo = redo | F(error_field).exists()
            elif samples._root_dataset.has_field(error_field):
                # the view leaves the error field out (select_fields): its records are read
                # through the dataset, or those samples would never be redone
                errored = samples._root_dataset.exists(error_field).values("_id")
                redo = redo | F("_id").is_in(errored)
            todo = samples.match(redo)
    if in_place and summary.no_prompts == summary.total:
        nothing_to_do = f"nothing to do: no sample has prompts in '{prompt_field}'"
    else:
        nothing_to_do = (f"nothing to do: every sample with prompts in '{prompt_field}' already has masks"
                         + (f" ({summary.no_prompts} had no prompts)" if summary.no_prompts else ""))
    todo_ids = _plan(summary, todo, nothing_to_do)
    if not todo_ids:
        return _finished(summary, samples, target, started)

    segmenter = Segmenter(model, device, box_batch_size=batch_size, point_labels_attr=point_labels_attr, dtype=dtype)

    def has_prompts(sample) -> bool:
        value = sample[prompt_field]
        return value is not None and bool(getattr(value, "detections" if kind == "boxes" else "keypoints", None))

    def compute(sample, image):
        if image is None:  # has_prompts said no, so the image was never read
            return _Result(fol.Detections(), 0, no_prompts=True)
        labels = segmenter.prompts(image, sample[prompt_field], in_place=in_place, only_missing=skip_existing)
        problems = segmenter.last_problems
        problem = describe_problems(problems, sample.id, prompt_field) if problems else None
        return _Result(labels, segmenter.last_masks, problem=problem, bad_prompts=len(problems))

    def write(sample, labels):
        if writer.store(sample.id, labels.detections, replace=not in_place):
            summary.png_samples += 1
            summary.mask_dir = writer.mask_dir
        sample[target] = labels

    return _run(summary, samples, todo_ids, [prompt_field, target], has_prompts, compute, write, error_field, started,
                stop_requested)


def iter_segment_text(
    samples,
    text: Any,
    label_field: str = "sam_text",
    det_model: Optional[str] = None,
    model: Any = None,
    device: Optional[str] = None,
    box_threshold: float = 0.25,
    text_threshold: float = 0.25,
    skip_existing: bool = True,
    mask_storage: str = "auto",
    mask_dir: Optional[str] = None,
    error_field: Optional[str] = None,
    stop_requested: Optional[Callable[[], bool]] = None,
    dtype: Optional[str] = None,
) -> Generator[Progress, None, RunSummary]:
    """:func:`segment_text` as a job (see :func:`iter_segment_everything`); the text detector and
    SAM load here, so a model that cannot load raises one line before any sample runs."""
    from samkit.annotate import text_segmenter

    started = time.monotonic()
    writer, summary = _start_run("segment_text", samples, label_field, error_field, mask_storage, mask_dir)
    error_field = summary.error_field
    todo = samples
    if skip_existing and samples.has_field(label_field):
        redo = ~F(label_field).exists()
        if samples.has_field(error_field):
            redo = redo | F(error_field).exists()
        todo = samples.match(redo)
    todo_ids = _plan(summary, todo, f"all {summary.total} samples already have '{label_field}': nothing to do")
    if not todo_ids:
        return _finished(summary, samples, label_field, started)
    # a name or path loads once per process (samkit.get_model), as for the other operations
    segmenter = text_segmenter(text, det_model or None, samkit.get_model(model, device, dtype), conf=box_threshold,
                               text_threshold=text_threshold, device=device, stability=True).load()

    def compute(sample, image):
        height, width = image.shape[:2]
        found = segmenter.segment(image)
        detections = []
        for obj in found:
            crop = tight_crop(obj.mask.mask)
            if crop is None:  # a box in which SAM found nothing: no mask to show
                continue
            box, mask = crop
            x0, y0, x1, y1 = obj.det_box
            detections.append(fol.Detection(
                label=obj.label, bounding_box=box, mask=mask, confidence=obj.det_score,
                predicted_iou=obj.mask.score, stability_score=obj.mask.stability_score, area=int(mask.sum()),
                detector_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
            ))
        return _Result(fol.Detections(detections=detections), len(detections))

    def write(sample, labels):
        if writer.store(sample.id, labels.detections, replace=True):
            summary.png_samples += 1
            summary.mask_dir = writer.mask_dir
        sample[label_field] = labels

    return _run(summary, samples, todo_ids, [label_field], lambda sample: True, compute, write, error_field, started,
                stop_requested)


def segment_text(samples, text: Any, label_field: str = "sam_text", det_model: Optional[str] = None,
                 model: Any = None, *, progress: Optional[ProgressCallback] = None, **options) -> RunSummary:
    """Segment what ``text`` names in each image of ``samples`` into ``label_field`` (``fo.Detections``).

    ``text``: phrases separated by '.' ("dog. tree.") or a list; a text detector (``det_model``: a
    GroundingDINO / OWLv2 Hugging Face id or local folder; None: GroundingDINO tiny) finds their
    boxes, SAM segments each box. Each detection: ``label`` = the phrase, ``confidence`` = the
    detector's score, a tight box and box-relative ``mask``, ``predicted_iou``,
    ``stability_score``, ``area`` and ``detector_box`` (the detector's own box, relative XYWH).
    Options: ``box_threshold``, ``text_threshold``, ``skip_existing``, ``mask_storage``,
    ``mask_dir``, ``error_field``, ``device``, ``dtype``; ``model`` as for :func:`segment_everything`.
    """
    return drive(iter_segment_text(samples, text, label_field, det_model, model, **options), progress)


def segment_prompts(samples, prompt_field: Optional[str] = None, label_field: Optional[str] = None, model: Any = None,
                    *, progress: Optional[ProgressCallback] = None, **options) -> RunSummary:
    """Masks from the boxes of a ``Detections`` field or the points of a ``Keypoints`` field.

    ``label_field`` given: new ``fo.Detections`` there, one per prompt, with the prompt's label,
    tags and attributes, a tight box around the mask, ``confidence`` = predicted IoU (clamped to [0, 1]),
    ``predicted_iou``, ``area`` and ``prompt_id`` (the prompt label's id). ``label_field`` None
    (or equal to ``prompt_field``): masks are written onto the prompt detections themselves,
    cropped to their boxes; boxes, labels, confidences and attributes stay, ``predicted_iou``
    and ``area`` are added. Keypoints: each Keypoint is one object; per-point labels (1
    positive, 0 negative) come from its ``point_labels_attr`` attribute (default
    ``sam_labels``), NaN points are ignored. Options: ``batch_size`` (boxes decoded at once),
    ``skip_existing``, ``mask_storage``, ``mask_dir``, ``error_field``, ``device``, ``dtype``.
    ``text`` (instead of a prompt field): the prompts are the boxes a text detector finds for
    these phrases, as :func:`segment_text` (``det_model``, ``box_threshold``, ``text_threshold``;
    ``label_field`` default "sam_text").
    """
    return drive(iter_segment_prompts(samples, prompt_field, label_field, model, **options), progress)
