"""The model side of the backend: one shared SAM model, an embedding cache shared by every
request, interactive prompts, batch pre-labelling and embedding pre-computation.

Concurrency: each request uses its own light `samkit.Predictor` (only the current image's
state) over the one model and the one `EmbeddingCache`. Interactive work takes `_interactive_lock`
around model calls, so two clicks on a new image compute its embedding once and the second is a
cache hit; batch pre-labelling and pre-computation take their own lock, so a long
segment-everything run does not queue annotators' clicks behind it (they share the CPU/GPU
instead). Downloads, RLE encoding and polygon tracing happen outside the locks.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests

from samkit.utils.prefetch import prefetch

from .errors import BackendError, ImageFetchError, LabelConfigError, LabelStudioUnreachable, TaskError
from .images import ImageFetcher, Source, unreachable_message
from .label_config import LabelConfig, parse_label_config
from .models import Context, PrecomputeRequest, PredictRequest, Region, SetupRequest, Task, project_id
from .regions import mask_regions, mean_score
from .settings import Settings

log = logging.getLogger("samkit.label_studio")

# The project a request is answered for: its fine-tuned model, if it has one (training.py), and
# that model's model_version, replace the base model's while the request is worked on.
_current_project: contextvars.ContextVar[str | None] = contextvars.ContextVar("samkit_ls_project", default=None)


@dataclass
class ProjectInfo:
    """What /setup told us about a project (used when env vars do not say otherwise)."""

    label_config: str | None = None
    hostname: str | None = None
    access_token: str | None = None


@dataclass
class PrecomputeJob:
    id: str
    project: int | None
    state: str = "queued"  # queued | running | done | failed
    total: int = 0
    done: int = 0
    computed: int = 0  # embeddings the encoder had to compute (the rest were cached)
    predictions: bool = False
    predicted: int = 0  # predictions stored in Label Studio
    skipped: int = 0  # tasks that already had this model_version's prediction
    errors: list[str] = field(default_factory=list)
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("id", "project", "state", "total", "done", "computed", "predictions",
                                               "predicted", "skipped", "errors", "error", "started", "finished")}


class SamBackend:
    def __init__(self, settings: Settings, model=None, cache=None) -> None:
        import samkit

        self.settings = settings
        self.cache = cache if cache is not None else samkit.EmbeddingCache(
            settings.cache_size, settings.cache_dir, max_disk_bytes=int(settings.cache_dir_mb * 2**20)
        )
        self.fetcher = ImageFetcher(
            timeout=settings.download_timeout,
            max_bytes=int(settings.max_image_mb * 2**20),
            local_files_root=settings.local_files_root,
            cache_bytes=int(settings.image_cache_mb * 2**20),
        )
        self.projects: dict[str, ProjectInfo] = {}
        self.jobs: dict[str, PrecomputeJob] = {}
        self._model = model
        self._model_error: str | None = None
        self._ready = threading.Event()
        if model is not None:
            self._ready.set()
        self._threads: int | None = None  # PyTorch CPU threads, once the model is loaded
        self.click_threads: int | None = None  # what the last click ran with (/stats)
        self.click_dtype: str | None = None  # and its decoder precision
        self._interactive_lock = threading.Lock()
        self._interactive_predictor = None
        self._batch_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.encoder_calls = 0
        self.requests = {"interactive": 0, "batch": 0}
        self.last_timings: dict[str, float] = {}
        self._batch_results = _SingleFlightCache(max_items=64)
        self.tuned: dict[str, tuple[Any, str]] = {}  # project id -> (fine-tuned model, its model_version)
        self._trainer = None
        self._text_lock = threading.Lock()
        self._text_detector = None  # the text detector (text prompts), its network loaded once

    # -- model --------------------------------------------------------------------------------
    @staticmethod
    def warm_up() -> None:
        """Import what the first request would otherwise wait for."""
        from samkit import mask_utils  # noqa: F401

    def load(self, background: bool = True) -> None:
        """Load the model and warm up (in a thread by default, so /health answers at once)."""
        if self._ready.is_set():
            threading.Thread(target=self.warm_up, name="samkit-warm-up", daemon=True).start()
            return

        def _load():
            import samkit

            t0 = time.perf_counter()
            try:
                from samkit.build import resolve_device

                self._threads = self.settings.torch_threads(resolve_device(self.settings.device).type)
                self._use_threads()
                self.warm_up()
                # from the process's model cache, as in every samkit front end (one load per checkpoint)
                self._model = samkit.get_model(self.settings.model_source, device=self.settings.device,
                                               dtype=self.settings.dtype)
                log.info("loaded %s (%s) on %s in %.1f s", self.settings.model_source, self._model.arch,
                         self._model.device, time.perf_counter() - t0)
            except Exception as e:  # reported by /health and every predict
                self._model_error = f"{e.__class__.__name__}: {e}" if not isinstance(e, samkit.SamkitError) else str(e)
                log.error("could not load the model: %s", self._model_error)
            finally:
                self._ready.set()

        if background:
            threading.Thread(target=_load, name="samkit-load-model", daemon=True).start()
        else:
            _load()

    def _use_threads(self) -> None:
        """Apply the thread setting in the calling thread: PyTorch keeps it per thread, and request
        threads may have started before the model was loaded."""
        if self._threads:
            import torch

            if torch.get_num_threads() != self._threads:
                torch.set_num_threads(self._threads)

    @property
    def model(self):
        """The model for the project being answered: its fine-tuned one, else the base model."""
        tuned = self.tuned.get(_current_project.get() or "")
        return tuned[0] if tuned is not None else self.base_model

    @property
    def base_model(self):
        if not self._ready.wait(timeout=600):
            raise BackendError("the model is still loading; try again in a moment")
        if self._model is None:
            raise BackendError(f"the model could not be loaded: {self._model_error}")
        return self._model

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._model is not None

    @property
    def model_error(self) -> str | None:
        return self._model_error

    @property
    def model_version(self) -> str:
        tuned = self.tuned.get(_current_project.get() or "")
        return tuned[1] if tuned is not None else self.base_model_version

    @property
    def base_model_version(self) -> str:
        if self.settings.model_version:
            return self.settings.model_version
        import samkit
        from pathlib import Path

        src = self.settings.model_source
        name = Path(src).stem if ("/" in src or src.endswith((".pt", ".pth"))) else src
        return f"samkit-{samkit.__version__}-{name}"

    @property
    def points_per_side(self) -> int:
        """Segment-everything grid: the setting, else 32 on a GPU and 16 on CPU (a 32x32 grid is
        1024 decoder runs, about a minute per image on two CPU cores)."""
        if self.settings.points_per_side:
            return self.settings.points_per_side
        return 16 if self.model.device.type == "cpu" else 32

    @contextlib.contextmanager
    def for_project(self, project):
        """Answer for `project` inside the block (its fine-tuned model and model_version)."""
        token = _current_project.set(project_id(project))
        try:
            yield
        finally:
            _current_project.reset(token)

    @property
    def trainer(self):
        """The project trainer (training.py), made on first use."""
        if self._trainer is None:
            from .training import ProjectTrainer

            self._trainer = ProjectTrainer(self)
        return self._trainer

    def use_tuned(self, project: str, model, model_version: str) -> None:
        """From now on answer `project` with `model` (a fine-tuned decoder on the shared encoder)."""
        self.tuned[project_id(project)] = (model, model_version)

    def _predictor(self, interactive: bool = False):
        """A predictor on the shared embedding cache; an interactive one (clicks, text prompts)
        decodes at SAMKIT_LS_CLICK_DTYPE, batch pre-labelling in float32."""
        import samkit

        dtype = self.settings.click_dtype if interactive else None
        return samkit.Predictor(self.model, cache=self.cache, decoder_dtype=dtype)

    def _count(self, predictor) -> None:
        if predictor.encoder_calls:
            with self._stats_lock:
                self.encoder_calls += predictor.encoder_calls
            predictor.encoder_calls = 0

    def stats(self) -> dict:
        return {
            "model_version": self.model_version,
            "ready": self.ready,
            "encoder_calls": self.encoder_calls,
            "cache": {"items": len(self.cache), "max_items": self.cache.max_items, "hits": self.cache.hits,
                      "misses": self.cache.misses,
                      "directory": str(self.cache.directory) if self.cache.directory else None},
            "image_cache": self.fetcher.cache_info(),
            "image_downloads": self.fetcher.downloads,
            "token_refreshes": self.fetcher.tokens.refreshes,
            "requests": dict(self.requests),
            "click_threads": self.click_threads,
            "click_dtype": self.click_dtype,
            "last_timings": dict(self.last_timings),
        }

    # -- protocol -----------------------------------------------------------------------------
    def setup(self, req: SetupRequest) -> dict:
        pid = project_id(req.project)
        if pid is not None:
            info = self.projects.setdefault(pid, ProjectInfo())
            info.label_config = req.schema_ or info.label_config
            info.hostname = req.hostname or info.hostname
            info.access_token = req.access_token or info.access_token
        if req.schema_:
            # Say at connection time (Label Studio shows it on the model card) when the config
            # has nothing samkit can answer with.
            parse_label_config(req.schema_)
        with self.for_project(pid):
            return {"model_version": self.model_version}

    def source(self, project: str | int | None) -> Source:
        """Label Studio URL and key: env/CLI settings first, else what /setup said for the project."""
        info = self.projects.get(project_id(project) or "", ProjectInfo())
        return Source(url=self.settings.label_studio_url or info.hostname,
                      api_key=self.settings.label_studio_api_key or info.access_token)

    def label_config(self, req_config: str | None, project: str | int | None) -> LabelConfig:
        xml = req_config or self.projects.get(project_id(project) or "", ProjectInfo()).label_config
        if not xml:
            raise LabelConfigError("the request carries no label_config and /setup did not send one for this project")
        return parse_label_config(xml)

    def predict(self, req: PredictRequest) -> dict:
        with self.for_project(req.project):
            return self._predict_request(req)

    def _predict_request(self, req: PredictRequest) -> dict:
        config = self.label_config(req.label_config, req.project)
        source = self.source(req.project)
        context = req.params.context
        if context is not None and context.result:
            if not req.tasks:
                raise TaskError("an interactive request needs the task the annotator is working on")
            with self._stats_lock:
                self.requests["interactive"] += 1
            results = [self.interactive(req.tasks[0], context, config, source)]
            # Label Studio reads only the first result in interactive mode; answer one per task anyway.
            results += [{"result": [], "score": 0.0, "model_version": self.model_version} for _ in req.tasks[1:]]
        else:
            with self._stats_lock:
                self.requests["batch"] += 1
            if self.settings.batch == "off":
                raise TaskError("batch pre-labelling is off (SAMKIT_LS_BATCH=off); use the interactive smart tools")
            results = [self.batch_task(task, config, source) for task in req.tasks]
        return {"results": results, "model_version": self.model_version}

    # -- interactive --------------------------------------------------------------------------
    def interactive(self, task: Task, context: Context, config: LabelConfig, source: Source) -> dict:
        t0 = time.perf_counter()
        points, boxes, label, to_name = [], [], None, None
        for region in context.result:
            control = config.control(region.from_name)
            kind = control.tag if control else {"keypointlabels": "KeyPointLabels",
                                                 "rectanglelabels": "RectangleLabels"}.get(region.type)
            if kind not in ("KeyPointLabels", "RectangleLabels") or region.value is None:
                continue
            to_name = to_name or region.to_name or (control.to_name if control else None)
            label = region.label or label
            if kind == "KeyPointLabels":
                points.append(region)
            else:
                boxes.append(region)
        text = self._request_text(context, config)
        if text is not None and not points and not boxes:
            return self._interactive_text(task, text, to_name or self._text_target(context), config, source)
        if not points and not boxes:
            raise TaskError("the interactive request has no keypoint, rectangle or text to segment from; "
                            "use a smart KeyPointLabels or RectangleLabels tool, or a TextArea")
        image_name = to_name if to_name in config.images else config.default_image
        outputs = self._outputs(config, image_name)
        image = self.task_image(task, config, image_name, source)
        h, w = image.shape[:2]
        t_img = time.perf_counter()

        coords = np.array([[_pct(p.value.x, w), _pct(p.value.y, h)] for p in points], dtype=np.float64).reshape(-1, 2)
        point_labels = np.array([0 if p.is_positive is False else 1 for p in points], dtype=np.int64)
        box_arr = np.array([_rect_xyxy(b.value, w, h) for b in boxes], dtype=np.float64).reshape(-1, 4)
        if len(box_arr) and not _has_area(box_arr).all():
            raise TaskError(f"a rectangle lies outside the {w}x{h} image (or has no area): draw it on the image")
        if len(coords):
            coords[:, 0] = coords[:, 0].clip(0, w - 1)
            coords[:, 1] = coords[:, 1].clip(0, h - 1)
        if len(coords) and not point_labels.any() and not len(box_arr):
            # Only negative clicks: nothing to segment yet.
            return {"result": [], "score": 0.0, "model_version": self.model_version}

        import samkit

        if len(box_arr) > 1 and not len(coords):
            prompts = [samkit.Prompt(box=box) for box in box_arr]
            labels = [box.label or label for box in boxes]  # each rectangle keeps its own label
        else:
            if len(box_arr) > 1:
                log.warning("%d rectangles with keypoints in one request: SAM takes one box per "
                            "object, the last rectangle is used", len(box_arr))
            prompts = [samkit.Prompt(coords, point_labels, box_arr[-1] if len(box_arr) else None)]
            labels = [label]
        with self._interactive_lock:
            t_lock = time.perf_counter()
            self._use_threads()
            import torch

            self.click_threads = torch.get_num_threads()
            # one predictor for all clicks: it knows the last image it was given, so a click on
            # the same (cached, read-only) image does not hash its pixels again
            if self._interactive_predictor is None or self._interactive_predictor.model is not self.model:
                self._interactive_predictor = self._predictor(interactive=True)
            predictor = self._interactive_predictor
            self.click_dtype = str(predictor.decoder_dtype).removeprefix("torch.")
            predictor.set_image(image)
            t_embed = time.perf_counter()
            # no stability score: Label Studio keeps none, and a click should not wait for one
            found = samkit.segment_objects(predictor, prompts, stability=False)
        masks, scores = [obj.mask for obj in found], [obj.score for obj in found]
        self._count(predictor)
        t_dec = time.perf_counter()
        result = []
        for mask, score, mask_label in zip(masks, scores, labels):
            result += mask_regions(mask, outputs, mask_label, float(score), self.settings.polygon_tolerance,
                                   self.settings.min_area, self.settings.max_polygons, self.settings.max_polygon_points)
        t_end = time.perf_counter()
        self.last_timings = {"image_s": t_img - t0, "wait_s": t_lock - t_img, "embed_s": t_embed - t_lock,
                             "decode_s": t_dec - t_embed, "encode_regions_s": t_end - t_dec, "total_s": t_end - t0}
        return {"result": result, "score": mean_score(scores),
                "model_version": self.model_version}

    # -- text prompts -------------------------------------------------------------------------
    @staticmethod
    def _request_text(context: Context, config: LabelConfig) -> str | None:
        """What was typed into a TextArea of the config (the latest one sent), or None."""
        text = None
        for region in context.result:
            if (region.type == "textarea" or region.from_name in config.text_areas) and region.text:
                text = region.text
        return text

    @staticmethod
    def _text_target(context: Context) -> str | None:
        return next((r.to_name for r in context.result if r.type == "textarea" and r.to_name), None)

    def text_detector(self, text: str):
        """The text detector (SAMKIT_LS_TEXT_MODEL) looking for `text`; its network loads on the
        first text prompt and is shared by every later one. A text naming nothing is a TaskError,
        a detector that cannot load a BackendError, each one line."""
        from samkit.annotate import AnnotateError
        from samkit.annotate.detectors import DetectOptions, load_detector
        from samkit.annotate.detectors.text import parse_text

        try:
            parse_text(text)
        except AnnotateError as e:
            raise TaskError(str(e)) from None
        with self._text_lock:
            if self._text_detector is None:
                options = DetectOptions(conf=self.settings.box_threshold, text_threshold=self.settings.text_threshold,
                                        device=self.settings.device)
                try:
                    self._text_detector = load_detector(self.settings.text_model, text, options)
                except AnnotateError as e:
                    raise BackendError(str(e)) from None
            return self._text_detector.with_text(text)

    def _segment_text(self, image: np.ndarray, text: str, predictor, lock: threading.Lock,
                      config: LabelConfig) -> list[tuple[np.ndarray, float, str]]:
        """(mask, detector score, label) for every object the text detector finds for `text`; the
        label is the output tools' label the phrase names (case aside), else the phrase."""
        from samkit.annotate import DetectSegmenter

        detector = self.text_detector(text)
        with lock:
            self._use_threads()
            found = DetectSegmenter(detector, predictor, stability=False).segment(image)
        labels = {name.lower(): name for name in config.label_names()}
        return [(f.mask.mask, f.det_score, labels.get(f.label.lower(), f.label)) for f in found]

    def _interactive_text(self, task: Task, text: str, to_name: str | None, config: LabelConfig,
                          source: Source) -> dict:
        t0 = time.perf_counter()
        image_name = to_name if to_name in config.images else config.default_image
        outputs = self._outputs(config, image_name)
        image = self.task_image(task, config, image_name, source)
        with self._interactive_lock:
            if self._interactive_predictor is None or self._interactive_predictor.model is not self.model:
                self._interactive_predictor = self._predictor(interactive=True)
            predictor = self._interactive_predictor
        masks = self._segment_text(image, text, predictor, self._interactive_lock, config)
        self._count(predictor)
        result = []
        for mask, score, label in masks:
            result += mask_regions(mask, outputs, label, float(score), self.settings.polygon_tolerance,
                                   self.settings.min_area, self.settings.max_polygons, self.settings.max_polygon_points)
        self.last_timings = {"total_s": time.perf_counter() - t0}
        return {"result": result, "score": mean_score([s for _, s, _ in masks]), "model_version": self.model_version}

    # -- batch --------------------------------------------------------------------------------
    def batch_task(self, task: Task, config: LabelConfig, source: Source) -> dict:
        """Pre-labels for one task. A task that fails (image not found, ...) gets an entry without
        a `result` key: Label Studio then skips it (no empty prediction that would stop a later
        retry) and logs the message."""
        try:
            return self._batch_task(task, config, source)
        except BackendError as e:
            log.warning("task %s: %s", task.id, e)
            return {"error": str(e), "task": task.id, "model_version": self.model_version}

    def _batch_task(self, task: Task, config: LabelConfig, source: Source, image: np.ndarray | None = None) -> dict:
        """The task's batch prediction; `image`: its image when already read."""
        image_name = config.default_image
        outputs = self._outputs(config, image_name)
        rects = self._batch_rectangles(task, config)
        if image is None:
            image = self.task_image(task, config, image_name, source)
        predictor = self._predictor()
        # Label Studio asks again for the same task each time it is opened while it has no
        # prediction; the same pixels, prompts and tools give the same answer, so compute it once
        # (and let a second identical request wait for the first instead of computing it again).
        # text prompts on (a TextArea in the config): a task without rectangles is searched for the
        # project's label names, as Label Studio's GroundingSAM example does
        text = ". ".join(config.label_names()) if config.text_prompts and not rects else None
        key = (predictor.image_key(image), tuple((r.to_name, r.label, *_rect_xyxy(r.value, 100, 100)) for r in rects),
               tuple(outputs), self.settings.batch_signature(), self.model_version, text)
        result = self._batch_results.get_or_compute(
            key, lambda: self._batch_compute(image, rects, outputs, predictor, text, config))
        return _with_new_ids(result)

    def _batch_compute(self, image: np.ndarray, rects: list[Region], outputs, predictor, text: str | None = None,
                       config: LabelConfig | None = None) -> dict:
        import samkit

        h, w = image.shape[:2]
        masks: list[tuple[np.ndarray, float, str | None]] = []
        if text:
            masks = list(self._segment_text(image, text, predictor, self._batch_lock, config))
        elif rects:
            boxes = np.array([_rect_xyxy(r.value, w, h) for r in rects], dtype=np.float64)
            inside = _has_area(boxes)
            if not inside.all():  # a rectangle off the image (or flat) has nothing to segment
                log.warning("skipping %d rectangle(s) outside the %dx%d image", int((~inside).sum()), w, h)
                boxes, rects = boxes[inside], [r for r, keep in zip(rects, inside) if keep]
            if rects:
                with self._batch_lock:
                    self._use_threads()
                    found = samkit.segment_objects(predictor, [samkit.Prompt(box=box) for box in boxes], image,
                                                   stability=False)
                masks = [(obj.mask, obj.score, rect.label) for obj, rect in zip(found, rects)]
        else:
            gen = samkit.MaskGenerator(
                self.model, points_per_side=self.points_per_side,
                pred_iou_thresh=self.settings.pred_iou_thresh,
                stability_score_thresh=self.settings.stability_score_thresh,
                min_mask_region_area=self.settings.min_area, predictor=predictor)
            with self._batch_lock:
                self._use_threads()
                records = gen.generate(image)
            records = samkit.best_first([r for r in records if r["area"] >= self.settings.min_area],
                                        self.settings.max_regions)
            masks = [(r["segmentation"], r["predicted_iou"], None) for r in records]
        self._count(predictor)
        result = []
        for mask, score, label in masks:
            result += mask_regions(mask, outputs, label, score, self.settings.polygon_tolerance, self.settings.min_area,
                                   self.settings.max_polygons, self.settings.max_polygon_points)
        scores = [s for _, s, _ in masks]
        return {"result": result, "score": mean_score(scores),
                "model_version": self.model_version}

    def _batch_rectangles(self, task: Task, config: LabelConfig) -> list[Region]:
        """The rectangles a batch prediction segments; TaskError when there are none and the
        settings allow nothing else (checked before the image is downloaded)."""
        rects = self._task_rectangles(task, config, config.default_image)
        if not rects and self.settings.batch == "boxes":
            raise TaskError(f"task {task.id} has no rectangles to segment and SAMKIT_LS_BATCH=boxes")
        return rects

    def _task_rectangles(self, task: Task, config: LabelConfig, image_name: str) -> list[Region]:
        """Rectangles already on the task: from its newest non-cancelled annotation that has any,
        else from predictions (a detector's boxes), never from this backend's own."""
        def rects(regions: list[Region]) -> list[Region]:
            return [r for r in regions if r.type == "rectanglelabels" and r.value is not None
                    and r.value.width and r.value.height and (r.to_name or image_name) == image_name]

        for ann in reversed(task.annotations):
            if not ann.was_cancelled and rects(ann.result):
                return rects(ann.result)
        for pred in reversed(task.predictions):
            if pred.model_version != self.model_version and rects(pred.result):
                return rects(pred.result)
        return []

    # -- helpers ------------------------------------------------------------------------------
    def _outputs(self, config: LabelConfig, image_name: str):
        outputs = config.outputs(image_name) or config.outputs()
        wanted = {"brush": "BrushLabels", "polygon": "PolygonLabels"}.get(self.settings.output)
        if wanted:
            outputs = [c for c in outputs if c.tag == wanted] or outputs
        return outputs

    def task_image(self, task: Task, config: LabelConfig, image_name: str, source: Source) -> np.ndarray:
        key = config.images.get(image_name)
        value = task.data.get(key) if key else None
        if value is None:
            where = f"task {task.id}" if task.id is not None else "the task"
            have = ", ".join(sorted(task.data)) or "nothing"
            raise TaskError(f"{where} has no image under data.{key} (the <Image value=\"${key}\"> of the "
                            f"labeling config); its data has: {have}")
        return self.fetcher.get(value, source, task.id)

    # -- pre-computation ----------------------------------------------------------------------
    def start_precompute(self, req: PrecomputeRequest) -> PrecomputeJob:
        if req.project is None and not req.tasks:
            raise TaskError("precompute needs a Label Studio project id or a list of tasks")
        if req.predictions and req.project is None:
            raise TaskError("storing predictions needs the Label Studio project id")
        job = PrecomputeJob(id=uuid.uuid4().hex[:12], project=req.project, predictions=req.predictions)
        self.jobs[job.id] = job
        threading.Thread(target=self._precompute, args=(job, req), name=f"precompute-{job.id}", daemon=True).start()
        return job

    def _precompute(self, job: PrecomputeJob, req: PrecomputeRequest) -> None:
        with self.for_project(req.project):
            self._precompute_project(job, req)

    def _precompute_project(self, job: PrecomputeJob, req: PrecomputeRequest) -> None:
        job.state = "running"
        try:
            source = self.source(req.project)
            if req.tasks:
                tasks, xml = req.tasks, req.label_config
            else:
                tasks, xml = self._project_tasks(req.project, source)
            config = self.label_config(xml or req.label_config, req.project)
            image_name = config.default_image
            job.total = len(tasks)

            def load(task: Task) -> tuple[Task, np.ndarray] | None:
                """A task's inputs, read in the background while the task before it is computed;
                None for a task that already has this model's prediction."""
                if req.predictions:
                    task = self._unpredicted_task(task, source)
                    if task is None:
                        return None
                    self._batch_rectangles(task, config)
                return task, self.task_image(task, config, image_name, source)

            with contextlib.closing(prefetch(tasks, load)) as loaded:
                for task, inputs in loaded:
                    try:
                        ready = inputs.result()
                        if ready is None:
                            job.skipped += 1
                        elif req.predictions:
                            self._prelabel(job, *ready, config, source)
                        else:
                            predictor = self._predictor()
                            with self._batch_lock:
                                predictor.set_image(ready[1])
                            job.computed += predictor.encoder_calls
                            self._count(predictor)
                    except LabelStudioUnreachable:
                        raise  # the same for every task that is left
                    except BackendError as e:
                        job.errors.append(f"task {task.id}: {e}")
                    job.done += 1
            job.state = "done"
        except BackendError as e:  # says what to fix; a traceback would only bury it
            job.state, job.error = "failed", str(e)
            log.error("precompute job %s failed: %s", job.id, e)
        except Exception as e:
            job.state, job.error = "failed", f"{e.__class__.__name__}: {e}"
            log.exception("precompute job %s failed", job.id)
        finally:
            job.finished = time.time()

    def _label_studio(self, method: str, source: Source, path: str, timeout: float, **kw):
        """A call to Label Studio's API; no answer at all is one line naming its URL."""
        session = self.fetcher.session
        headers = self.fetcher.tokens.headers(source, session)
        try:
            return session.request(method, f"{source.base}{path}", headers=headers, timeout=timeout, **kw)
        except requests.RequestException as e:
            raise LabelStudioUnreachable(unreachable_message(source.base, e)) from None

    @staticmethod
    def _label_studio_json(resp: requests.Response, source: Source) -> Any:
        """The body of an API answer; something else than JSON means another server answered."""
        try:
            return resp.json()
        except ValueError:
            kind = resp.headers.get("Content-Type", "no content type")
            raise ImageFetchError(f"{resp.url} did not answer with JSON ({kind}): check that LABEL_STUDIO_URL "
                                  f"({source.base}) is Label Studio's address") from None

    @staticmethod
    def _label_studio_status(resp: requests.Response, source: Source, what: str) -> ImageFetchError:
        msg = f"Label Studio at {source.base} answered HTTP {resp.status_code} {what}"
        if resp.status_code in (401, 403):
            return ImageFetchError(msg + ": check LABEL_STUDIO_API_KEY")
        if resp.status_code == 404:
            return ImageFetchError(msg + ": check the project id, and that LABEL_STUDIO_URL is Label Studio's address")
        return ImageFetchError(msg)

    def _unpredicted_task(self, task: Task, source: Source) -> Task | None:
        """The task with its annotations (whose rectangles get masks), or None when it already
        has this model's prediction."""

        def get(path: str, **params) -> list:
            # (not /api/tasks/<id>/: opening a task makes Label Studio ask this backend for a prediction)
            resp = self._label_studio("GET", source, path, timeout=60, params=params)
            if resp.status_code != 200:
                raise self._label_studio_status(resp, source, f"for {path}")
            return self._label_studio_json(resp, source)

        predictions = get("/api/predictions/", task=task.id)
        if any(p.get("model_version") == self.model_version for p in predictions):
            return None
        return Task(id=task.id, data=task.data, annotations=get(f"/api/tasks/{task.id}/annotations/"),
                    predictions=predictions)

    def _prelabel(self, job: PrecomputeJob, task: Task, image: np.ndarray, config: LabelConfig,
                  source: Source) -> None:
        """One task's batch prediction (masks for its annotations' rectangles; without any,
        segment everything), stored in Label Studio (no 100 s request timeout to beat)."""
        before = self.encoder_calls
        prediction = self._batch_task(task, config, source, image)
        if "result" not in prediction:
            raise TaskError(prediction.get("error", "no prediction"))
        job.computed += self.encoder_calls - before
        resp = self._label_studio("POST", source, "/api/predictions/", timeout=120,
                                  json={"task": task.id, "result": prediction["result"], "score": prediction["score"],
                                        "model_version": self.model_version})
        if resp.status_code >= 300:
            raise ImageFetchError(f"Label Studio refused the prediction (HTTP {resp.status_code}): {resp.text[:300]}")
        job.predicted += 1

    def _project_tasks(self, project: int, source: Source) -> tuple[list[Task], str | None]:
        if not source.base:
            raise ImageFetchError("precomputing a project needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
                                  "(or a /setup from Label Studio for that project)")
        resp = self._label_studio("GET", source, f"/api/projects/{project}/", timeout=30)
        if resp.status_code != 200:
            raise self._label_studio_status(resp, source, f"for project {project}")
        project_info = self._label_studio_json(resp, source)
        xml = project_info.get("label_config") if isinstance(project_info, dict) else None
        tasks: list[Task] = []
        page = 1
        while True:
            resp = self._label_studio("GET", source, "/api/tasks/", timeout=60,
                                      params={"project": project, "page": page, "page_size": 100})
            if resp.status_code == 404 and page > 1:
                break
            if resp.status_code != 200:
                raise self._label_studio_status(resp, source, f"listing project {project}'s tasks")
            body: Any = self._label_studio_json(resp, source)
            items = body.get("tasks", []) if isinstance(body, dict) else body
            tasks += [Task(id=t.get("id"), data=t.get("data") or {}) for t in items]
            total = body.get("total", len(tasks)) if isinstance(body, dict) else len(tasks)
            if not items or len(tasks) >= total:
                break
            page += 1
        return tasks, xml


def _pct(value: float | None, size: int) -> float:
    if value is None or not math.isfinite(value):
        raise TaskError("a keypoint or rectangle has no x/y position")
    return value / 100.0 * size


def _rect_xyxy(v, w: int, h: int) -> list[float]:
    """A Label Studio rectangle (percent x, y, width, height, rotation in degrees about its top-left
    corner) -> the XYXY pixel box around it."""
    x, y = _pct(v.x, w), _pct(v.y, h)
    rw, rh = _pct(v.width or 0.0, w), _pct(v.height or 0.0, h)
    angle = math.radians(v.rotation or 0.0)
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        xs = [x + dx * c - dy * s for dx, dy in ((0, 0), (rw, 0), (rw, rh), (0, rh))]
        ys = [y + dx * s + dy * c for dx, dy in ((0, 0), (rw, 0), (rw, rh), (0, rh))]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    else:
        x0, y0, x1, y1 = x, y, x + rw, y + rh
    return [max(0.0, min(x0, w)), max(0.0, min(y0, h)), max(0.0, min(x1, w)), max(0.0, min(y1, h))]


def _has_area(boxes: np.ndarray) -> np.ndarray:
    """(N,) True for XYXY pixel boxes (clipped to the image) that still have width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _with_new_ids(prediction: dict) -> dict:
    """A copy of a cached prediction whose regions get fresh ids."""
    from .regions import region_id

    out = dict(prediction)
    out["result"] = [{**r, "id": region_id()} for r in prediction.get("result", [])]
    return out


class _SingleFlightCache:
    """Results by key, least recently used out; concurrent callers of one key share one computation."""

    def __init__(self, max_items: int) -> None:
        from collections import OrderedDict

        self.max_items = max_items
        self._items: OrderedDict = OrderedDict()
        self._running: dict = {}
        self._lock = threading.Lock()

    def get_or_compute(self, key, compute):
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                event = self._running.get(key)
                if event is None:
                    event = self._running[key] = threading.Event()
                    owner = True
                else:
                    owner = False
            if not owner:
                event.wait()
                continue  # the owner stored the result, or failed: then try ourselves
            try:
                value = compute()
                with self._lock:
                    self._items[key] = value
                    while len(self._items) > self.max_items:
                        self._items.popitem(last=False)
                return value
            finally:
                with self._lock:
                    self._running.pop(key, None)
                event.set()
