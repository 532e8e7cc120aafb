"""The ``@samkit/fiftyone`` operators: ``segment_everything``, ``segment_prompts`` and ``segment_text``.

Both run from the App (immediately, streaming progress, or scheduled as delegated operations),
from Python (``fiftyone.operators.execute_operator``) and on a delegated worker
(``fiftyone delegated launch``). Parameters not given take the defaults in ``*_DEFAULTS``;
the model, device, dtype and mask folder fall back to the executing process's
``SAMKIT_CHECKPOINT`` / ``SAMKIT_MODEL``, ``SAMKIT_DEVICE``, ``SAMKIT_DTYPE`` and
``SAMKIT_MASK_DIR`` (declared as plugin secrets, so FiftyOne resolves them from the environment of
whoever executes: for a delegated run, the worker; the same meaning as everywhere in samkit, see
``samkit.models``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Generator, Optional

import fiftyone.core.labels as fol
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionOptions

import samkit
from samkit.models import ENVIRONMENT, device_setting, dtype_setting, model_source

from samkit.fiftyone.runner import (
    MASK_STORAGE_MODES,
    Progress,
    RunSummary,
    check_output_field,
    drive,
    iter_segment_everything,
    iter_segment_prompts,
    iter_segment_text,
    prompt_kind,
)
from samkit.fiftyone.segmenter import DEFAULT_BOX_BATCH_SIZE, DEFAULT_POINT_LABELS_ATTR, EVERYTHING_DEFAULTS

COMMON_DEFAULTS: dict[str, Any] = {
    "model": "",
    "dtype": "",
    "skip_existing": True,
    "mask_storage": "auto",
    "mask_dir": "",
}
EVERYTHING_PARAM_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "output_field": "sam_everything",
    **EVERYTHING_DEFAULTS,
    "max_masks": 0,  # 0: no limit
}
PROMPTS_PARAM_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "prompt_field": None,
    "in_place": False,
    "output_field": None,  # default: "<prompt_field>_sam"
    "batch_size": DEFAULT_BOX_BATCH_SIZE,
    "point_labels_attr": DEFAULT_POINT_LABELS_ATTR,
}
TEXT_DETECTOR_DEFAULTS: dict[str, Any] = {
    "det_model": "",  # empty: GroundingDINO tiny (samkit.annotate's default text detector)
    "box_threshold": 0.25,
    "text_threshold": 0.25,
}
PROMPTS_PARAM_DEFAULTS.update(text="", **TEXT_DETECTOR_DEFAULTS)
TEXT_PARAM_DEFAULTS: dict[str, Any] = {
    **COMMON_DEFAULTS,
    "text": None,
    "output_field": "sam_text",
    **TEXT_DETECTOR_DEFAULTS,
}
PROGRESS_INTERVAL_S = 1.0
STOP_CHECK_INTERVAL_S = 10.0  # how often a delegated run asks whether it was marked failed


def _param(ctx, defaults: dict[str, Any], name: str) -> Any:
    value = ctx.params.get(name)
    return defaults[name] if value is None or value == "" else value


def _secret(ctx, key: str) -> Optional[str]:
    try:
        value = ctx.secret(key)
    except Exception:  # no secrets backend: fall back to nothing, the runner reads os.environ
        value = None
    return value or None


def _model_settings(ctx, model: Optional[str], dtype: Optional[str]) -> dict[str, Any]:
    """The model, device and dtype of a run: the form's, else the executing process's SAMKIT_*
    variables as plugin secrets (where FiftyOne has no secrets backend they stay None here, and
    samkit.get_model reads them from os.environ)."""
    env = {name: value for name in ENVIRONMENT if (value := _secret(ctx, name))}
    if not env:
        return dict(model=model or None, device=None, dtype=dtype or None)
    return dict(model=model_source(model, environ=env), device=device_setting(None, env),
                dtype=dtype_setting(dtype or None, env))


def _from_app(ctx) -> bool:
    # The App posts the operator URI in its request body; Python's execute_operator does not.
    return "operator_uri" in ctx.request_params


def _target_view(ctx):
    """The samples to run on: the operator's target view; of a grouped dataset, the slice the
    App (or the caller's ``group_slice``) has active."""
    view = ctx.target_view()
    if view.media_type == "group" and ctx.group_slice:
        view = view.select_group_slices(ctx.group_slice)
    return view


def _stop_requested(ctx) -> Optional[Callable[[], bool]]:
    """For a delegated run, a check that turns True once the operation has been marked failed
    elsewhere (``fiftyone delegated fail ID``, or the App's "mark as failed"): the worker then
    stops after the sample it is on, instead of running to the end. Asks the database at most
    every STOP_CHECK_INTERVAL_S. None for an immediate run."""
    operation_id = getattr(ctx, "_delegated_operation_id", None)  # no public accessor in FiftyOne 1.13
    if not ctx.delegated or operation_id is None:
        return None
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    service = DelegatedOperationService()
    last_check = time.monotonic()

    def stop_requested() -> bool:
        nonlocal last_check
        now = time.monotonic()
        if now - last_check < STOP_CHECK_INTERVAL_S:
            return False
        last_check = now
        try:
            operation = service.get(operation_id)
        except Exception:  # a database hiccup must not end the run
            return False
        return operation is not None and operation.run_state == ExecutionRunState.FAILED

    return stop_requested


def _label_fields(dataset, doc_types) -> list[str]:
    if dataset is None:
        return []
    schema = dataset.get_field_schema(embedded_doc_type=doc_types)
    return sorted(schema)


def _loads_here(ctx) -> bool:
    """Whether what the run will load (model, detector) is checked in this process, before it
    starts: not when a run is only being queued (the worker that will run it has its own files,
    packages and network, and checks them itself when it takes the run up, before running), nor
    when there is nothing to run on (the run says so plainly and loads nothing)."""
    if ctx.requesting_delegated_execution and not ctx.delegated:
        return False
    try:
        return _target_view(ctx).limit(1).count() > 0
    except Exception:  # no dataset yet (the App's form opening): the checks still help
        return True


def _model_problem(ctx, defaults: dict[str, Any]) -> Optional[str]:
    """Why the model cannot be loaded here, checked before the run (see _add_common_inputs)."""
    if not _loads_here(ctx):
        return None
    from samkit.build import checkpoint_problem

    env = {name: value for name in ENVIRONMENT if (value := _secret(ctx, name))}
    return checkpoint_problem(model_source(_param(ctx, defaults, "model") or None, environ=env or None))


def _text_detector_problem(ctx, defaults: dict[str, Any]) -> Optional[str]:
    """Why the text detector cannot be loaded here (transformers missing, no such folder, an id
    that cannot be downloaded), checked before the run (see _add_text_detector_inputs)."""
    if not _loads_here(ctx):
        return None
    from samkit.annotate.detectors.text import text_detector_problem

    return text_detector_problem(_param(ctx, defaults, "det_model") or None)


def _add_common_inputs(inputs: "types.Object", ctx, defaults: dict[str, Any]) -> None:
    model = inputs.str(
        "model",
        default=defaults["model"],
        required=False,
        label="Model",
        description=(
            "mobile_sam, vit_b, vit_l, vit_h, or a checkpoint file path on the machine that runs "
            "the operation. Empty: $SAMKIT_CHECKPOINT there, else $SAMKIT_MODEL, else mobile_sam."
        ),
    )
    inputs.str(
        "dtype",
        default=defaults["dtype"],
        required=False,
        label="Precision",
        description=(
            "float32, bfloat16 (faster on CPUs with AVX-512 BF16) or float16 (GPUs). "
            "Empty: $SAMKIT_DTYPE there, else float32."
        ),
    )
    # A model that cannot be found (a wrong path; a name not downloaded yet with no network) is
    # an invalid input: the App shows it at the field, and execute_operator raises it as one
    # line ("Validation error. Path: model. Reason: ...") instead of the run's traceback.
    problem = _model_problem(ctx, defaults)
    if problem:
        model.invalid = True
        model.error_message = problem
    inputs.bool(
        "skip_existing",
        default=defaults["skip_existing"],
        label="Skip samples that already have results",
        description="Resume an interrupted run: samples already done are left alone",
    )
    storage = types.RadioGroup(orientation="horizontal")
    storage.add_choice("auto", label="auto", description="inline, PNG files when a sample's masks get large")
    storage.add_choice("inline", label="inline", description="in the database")
    storage.add_choice("png", label="PNG files", description="mask_path to PNGs in the mask folder")
    inputs.enum(
        "mask_storage",
        list(MASK_STORAGE_MODES),
        default=defaults["mask_storage"],
        label="Mask storage",
        description="A sample document holds at most 16 MB; many large masks belong in files",
        view=storage,
    )
    if ctx.params.get("mask_storage", defaults["mask_storage"]) != "inline":
        inputs.str(
            "mask_dir",
            default=defaults["mask_dir"],
            required=False,
            label="Mask folder",
            description=(
                "Where PNG masks go. Empty: $SAMKIT_MASK_DIR, else "
                "<default dataset dir>/samkit_masks/<dataset>"
            ),
        )


def _add_output_field(inputs: "types.Object", ctx, default: str, label: str) -> None:
    name = ctx.params.get("output_field") or default
    # not required: a call without it (Python's execute_operator) takes the default
    prop = inputs.str("output_field", default=default, required=False, label=label,
                      description="A new field, or an existing Detections field to add to / overwrite")
    if ctx.dataset is not None:
        try:
            check_output_field(ctx.dataset, name)
        except samkit.SamkitError as exc:
            prop.invalid = True
            prop.error_message = str(exc)


def _add_text_detector_inputs(inputs: "types.Object", ctx, defaults: dict[str, Any]) -> None:
    det_model = inputs.str("det_model", default=defaults["det_model"], required=False, label="Text detector",
                           description="A GroundingDINO or OWLv2 Hugging Face id or a local model folder on the "
                                       "machine that runs the operation. Empty: IDEA-Research/grounding-dino-tiny")
    # as for the model (_add_common_inputs): an invalid input, shown at the field and refused
    # before the run starts, rather than the run's error once it loads the detector
    problem = _text_detector_problem(ctx, defaults)
    if problem:
        det_model.invalid = True
        det_model.error_message = problem
    inputs.float("box_threshold", default=defaults["box_threshold"], min=0.0, max=1.0, label="Box threshold",
                 description="Keep boxes the detector scores above this")
    inputs.float("text_threshold", default=defaults["text_threshold"], min=0.0, max=1.0, label="Text threshold",
                 description="GroundingDINO: the matched phrase's score must pass this")


def _not_schedulable(ctx) -> Optional[str]:
    """Why the run cannot be delegated, or None.

    A delegated worker loads the dataset by name later, in another process; FiftyOne deletes a
    non-persistent dataset once the process that made it ends, so the queued run would fail
    to find it (or it would vanish mid-run)."""
    dataset = ctx.dataset
    if dataset is None or dataset.persistent:
        return None
    return (
        f"dataset '{dataset.name}' is not persistent, so a scheduled (delegated) run would not find it "
        "once this session ends: set dataset.persistent = True, or run it immediately"
    )


def _delegation_hint(inputs: "types.Object", ctx) -> None:
    reason = _not_schedulable(ctx)
    if reason is None:
        inputs.view(
            "delegation_hint",
            types.Notice(
                label=(
                    "For thousands of samples, schedule the run (delegated execution) and start a "
                    "worker with `fiftyone delegated launch` where the model and images are; an "
                    "interrupted run resumes where it stopped."
                )
            ),
        )
    elif ctx.requesting_delegated_execution or ctx.delegated:
        # an invalid property fails FiftyOne's input validation, before anything is queued;
        # the App shows its error_message
        prop = inputs.view("delegation", types.Error(label=reason))
        prop.invalid = True
        prop.error_message = reason
    else:
        inputs.view("delegation_hint", types.Notice(
            label="This dataset is not persistent, so the run can only be executed now; to schedule "
                  "it, set dataset.persistent = True"))


class _SamOperator(foo.Operator):
    """Shared execution: progress, streaming to the App, the result shown at the end."""

    labels: dict[str, str] = {}  # name, label, description
    defaults: dict[str, Any] = {}

    @property
    def config(self):
        return foo.OperatorConfig(
            **self.labels,
            dynamic=True,  # the form changes with the prompt field and the storage mode
            execute_as_generator=True,  # progress streamed to the App (see execute)
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_execution_options(self, ctx):
        # The App then offers only "Execute" for a non-persistent dataset; a request to delegate
        # anyway (Python's request_delegation=True) fails input validation (_delegation_hint).
        if _not_schedulable(ctx) is not None:
            return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=False)
        return super().resolve_execution_options(ctx)

    def _job(self, ctx) -> Generator[Progress, None, RunSummary]:
        raise NotImplementedError

    def _common(self, ctx) -> dict[str, Any]:
        """Job arguments both operators take: model, device, resume and mask storage."""
        p = lambda name: _param(ctx, self.defaults, name)  # noqa: E731
        return dict(
            **_model_settings(ctx, p("model"), p("dtype")),
            skip_existing=bool(p("skip_existing")),
            mask_storage=p("mask_storage"),
            mask_dir=p("mask_dir") or _secret(ctx, "SAMKIT_MASK_DIR"),
            stop_requested=_stop_requested(ctx),
        )

    def execute(self, ctx):
        job = self._job(ctx)
        if not ctx.delegated and _from_app(ctx):
            return self._stream(ctx, job)
        summary = _drive_with_progress(job, ctx.set_progress)
        return summary.to_dict()

    def _stream(self, ctx, job):
        summary = yield from _mapped(_throttled(job),
                                     lambda u: ctx.ops.set_progress(label=u.label, progress=u.fraction))
        yield ctx.ops.set_progress(label=summary.message, progress=1.0)
        yield ctx.ops.reload_dataset()
        yield ctx.ops.notify(summary.message,
                             variant="warning" if summary.failed or summary.bad_prompts else "success")

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        outputs.int("processed", label="Samples written")
        outputs.int("skipped", label="Samples skipped (already done)")
        outputs.int("failed", label="Samples failed")
        outputs.int("masks", label="Masks")
        if (ctx.results or {}).get("prompt_field"):
            outputs.int("no_prompts", label="Samples without prompts")
            outputs.int("bad_prompts", label="Unusable prompts (no mask)")
        return types.Property(outputs, view=types.View(label="SAM run"))


def _throttled(job: Generator[Progress, None, RunSummary]) -> Generator[Progress, None, RunSummary]:
    """The job's progress updates, at most one per PROGRESS_INTERVAL_S (and the last one)."""
    last = 0.0
    while True:
        try:
            update = next(job)
        except StopIteration as stop:
            return stop.value
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL_S or update.done == update.total:
            last = now
            yield update


def _mapped(gen: Generator, fn: Callable[[Any], Any]) -> Generator:
    """Yield fn(item) for each item of gen; return what gen returns."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        yield fn(item)


def _drive_with_progress(job, set_progress: Callable[..., Any]) -> RunSummary:
    summary = drive(_throttled(job), lambda u: set_progress(progress=u.fraction, label=u.label))
    set_progress(progress=1.0, label=summary.message)
    return summary


class SegmentEverything(_SamOperator):
    labels = {"name": "segment_everything", "label": "SAM: segment everything",
              "description": "Instance masks for every object SAM finds, as Detections (samkit)"}
    defaults = EVERYTHING_PARAM_DEFAULTS

    def resolve_input(self, ctx):
        d = self.defaults
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Segment")
        _add_output_field(inputs, ctx, d["output_field"], "Output field")
        _add_common_inputs(inputs, ctx, d)
        inputs.int("points_per_side", default=d["points_per_side"], min=1, max=256, label="Points per side",
                   description="Grid of point prompts per image side (32: 1024 prompts)")
        inputs.int("points_per_batch", default=d["points_per_batch"], min=1, max=4096, label="Batch size",
                   description="Point prompts decoded at once (memory vs. speed)")
        inputs.float("pred_iou_thresh", default=d["pred_iou_thresh"], min=0.0, max=1.0,
                     label="Predicted IoU threshold", description="Empty: the model family's default")
        inputs.float("stability_score_thresh", default=d["stability_score_thresh"], min=0.0, max=1.0,
                     label="Stability score threshold")
        inputs.float("box_nms_thresh", default=d["box_nms_thresh"], min=0.0, max=1.0,
                     label="Box NMS threshold")
        inputs.int("crop_n_layers", default=d["crop_n_layers"], min=0, max=4, label="Crop layers",
                   description="Also segment 4^k zoomed crops per layer k (small objects; slower)")
        inputs.int("min_mask_region_area", default=d["min_mask_region_area"], min=0,
                   label="Min region area (pixels)", description="Remove small islands and holes")
        inputs.int("max_masks", default=d["max_masks"], min=0, label="Max masks per sample",
                   description="Keep the best by predicted IoU; 0: no limit")
        _delegation_hint(inputs, ctx)
        return types.Property(inputs, view=types.View(label="SAM: segment everything"))

    def _job(self, ctx):
        d = self.defaults
        p = lambda name: _param(ctx, d, name)  # noqa: E731
        return iter_segment_everything(
            _target_view(ctx),
            label_field=p("output_field"),
            **{name: p(name) for name in EVERYTHING_DEFAULTS},
            max_masks=p("max_masks") or None,
            **self._common(ctx),
        )


class SegmentPrompts(_SamOperator):
    labels = {"name": "segment_prompts", "label": "SAM: masks from boxes or keypoints",
              "description": "Instance masks from a Detections (boxes) or Keypoints (points) field (samkit)"}
    defaults = PROMPTS_PARAM_DEFAULTS

    def resolve_input(self, ctx):
        d = self.defaults
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Segment")
        choices = _label_fields(ctx.dataset, (fol.Detections, fol.Keypoints))
        dropdown = types.Dropdown(label="Prompt field",
                                  description="Detections: one mask per box. Keypoints: one mask per keypoint")
        for name in choices:
            dropdown.add_choice(name, label=name)
        prompt_field = ctx.params.get("prompt_field")
        text = ctx.params.get("text")
        inputs.str("text", default=d["text"], required=False, label="Text (instead of a prompt field)",
                   description="Phrases separated by '.', e.g. 'dog. tree.': a text detector finds their boxes")
        if text:
            _add_text_detector_inputs(inputs, ctx, d)
            _add_output_field(inputs, ctx, "sam_text", "Output field")
            _add_common_inputs(inputs, ctx, d)
            _delegation_hint(inputs, ctx)
            return types.Property(inputs, view=types.View(label="SAM: masks from boxes, keypoints or text"))
        prop = inputs.str("prompt_field", required=True, label="Prompt field", view=dropdown)
        kind = None
        if not choices:
            prop.invalid = True
            prop.error_message = "This dataset has no Detections or Keypoints field to take prompts from"
        elif prompt_field:
            try:
                kind = prompt_kind(ctx.dataset, prompt_field)
            except samkit.SamkitError as exc:
                prop.invalid = True
                prop.error_message = str(exc)

        if kind == "boxes":
            inputs.bool("in_place", default=d["in_place"], label="Write masks onto the prompt detections",
                        description="Keep their boxes, labels and attributes; add a mask cropped to each box")
        if kind == "points" and ctx.params.get("in_place"):
            prop = inputs.bool("in_place", label="Write masks onto the prompt labels")
            prop.invalid = True
            prop.error_message = (f"'{prompt_field}' holds Keypoints, which cannot carry masks; "
                                  "give an output field for the new Detections")
        if kind == "points":
            inputs.str("point_labels_attr", default=d["point_labels_attr"], required=False,
                       label="Point labels attribute",
                       description="Keypoint attribute with one 1 (positive) / 0 (negative) per point; "
                                   "absent: all points positive")
        if not (kind == "boxes" and ctx.params.get("in_place")):
            _add_output_field(inputs, ctx, f"{prompt_field}_sam" if prompt_field else "sam_masks",
                              "Output field")
        _add_common_inputs(inputs, ctx, d)
        inputs.int("batch_size", default=d["batch_size"], min=1, max=4096, label="Batch size",
                   description="Boxes decoded at once")
        _delegation_hint(inputs, ctx)
        return types.Property(inputs, view=types.View(label="SAM: masks from boxes or keypoints"))

    def _job(self, ctx):
        d = self.defaults
        p = lambda name: _param(ctx, d, name)  # noqa: E731
        if p("text"):
            return iter_segment_prompts(
                _target_view(ctx), None, label_field=p("output_field") or "sam_text", text=p("text"),
                det_model=p("det_model") or None, box_threshold=p("box_threshold"),
                text_threshold=p("text_threshold"), **self._common(ctx))
        prompt_field = p("prompt_field")
        in_place = bool(p("in_place"))
        output_field = None if in_place else (p("output_field") or f"{prompt_field}_sam")
        return iter_segment_prompts(
            _target_view(ctx),
            prompt_field,
            label_field=output_field,
            batch_size=p("batch_size"),
            point_labels_attr=p("point_labels_attr"),
            **self._common(ctx),
        )


class SegmentText(_SamOperator):
    labels = {"name": "segment_text", "label": "SAM: segment by text",
              "description": "Instance masks of what a text names ('dog. tree.'): a GroundingDINO or OWLv2 "
                             "detector finds the boxes, SAM segments them (samkit)"}
    defaults = TEXT_PARAM_DEFAULTS

    def resolve_input(self, ctx):
        d = self.defaults
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Segment")
        inputs.str("text", required=True, label="Text",
                   description="Phrases separated by '.', e.g. 'dog. tree.'; each detection gets its phrase as label")
        _add_text_detector_inputs(inputs, ctx, d)
        _add_output_field(inputs, ctx, d["output_field"], "Output field")
        _add_common_inputs(inputs, ctx, d)
        _delegation_hint(inputs, ctx)
        return types.Property(inputs, view=types.View(label="SAM: segment by text"))

    def _job(self, ctx):
        p = lambda name: _param(ctx, self.defaults, name)  # noqa: E731
        return iter_segment_text(
            _target_view(ctx),
            p("text"),
            label_field=p("output_field") or self.defaults["output_field"],
            det_model=p("det_model") or None,
            box_threshold=p("box_threshold"),
            text_threshold=p("text_threshold"),
            **self._common(ctx),
        )


from samkit.fiftyone.finetune_operator import FineTune  # noqa: E402 (it uses this module's helpers)

OPERATORS = (SegmentEverything, SegmentPrompts, SegmentText, FineTune)
