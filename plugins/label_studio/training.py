"""Label Studio's training protocol: fine-tune the backend's model on a project's annotations.

`POST /webhook` with START_TRAINING (the Start Training button; it carries no annotation), and,
when SAMKIT_LS_TRAIN_EVERY=N is set, every N ANNOTATION_CREATED / ANNOTATION_UPDATED events,
start a run in the background: the project's annotations are fetched through Label Studio's API
(`GET /api/projects/{id}/export?exportType=JSON`), their brush masks and polygons become
samkit.finetune records (format translation only), and samkit.finetune trains the mask decoder.
The tuned decoder then answers that project's requests, with a new model_version (reported by
/setup and in every prediction); the image encoder is frozen, so it stays shared and the cached
embeddings stay valid. One run at a time: a request during a run is remembered and runs after it.
Clicks keep being answered while a run trains.

| variable | default | meaning |
|---|---|---|
| SAMKIT_LS_TRAIN_EVERY | 0 | also train after this many new or updated annotations of a project (0: only Start Training) |
| SAMKIT_LS_TRAIN_EPOCHS | 5 | epochs per run |
| SAMKIT_LS_TRAIN_LR | 1e-4 | AdamW learning rate |
| SAMKIT_LS_TRAIN_DIR | ~/.cache/samkit/label-studio | tuned checkpoints (project-<id>/), their logs, and the training embeddings |
"""  # noqa: E501 (a markdown table)

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import requests

from .errors import LabelStudioUnreachable, TaskError
from .images import unreachable_message
from .models import project_id

log = logging.getLogger("samkit.label_studio")

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
MIN_VALIDATION_IMAGES = 5  # with fewer annotated tasks every one is trained on (no held-out score)


@dataclass
class TrainingSettings:
    every: int = 0
    epochs: int = 5
    lr: float = 1e-4
    directory: str | None = None

    @classmethod
    def from_env(cls) -> "TrainingSettings":
        from .settings import env_number

        settings = cls(every=env_number("SAMKIT_LS_TRAIN_EVERY", int, 0),
                       epochs=env_number("SAMKIT_LS_TRAIN_EPOCHS", int, 5),
                       lr=env_number("SAMKIT_LS_TRAIN_LR", float, 1e-4),
                       directory=os.environ.get("SAMKIT_LS_TRAIN_DIR") or None)
        from samkit import SamkitError

        if settings.every < 0 or settings.epochs < 1 or not settings.lr > 0:
            raise SamkitError("SAMKIT_LS_TRAIN_EVERY must be >= 0, SAMKIT_LS_TRAIN_EPOCHS >= 1 and "
                              "SAMKIT_LS_TRAIN_LR > 0")
        return settings

    @property
    def root(self) -> Path:
        if self.directory:
            return Path(self.directory)
        import samkit

        return samkit.cache_dir() / "label-studio"


@dataclass
class TrainingJob:
    project: str
    run: int  # the project's run number: its model_version ends in "-ft<run>"
    state: str = "queued"  # queued | running | done | failed
    reason: str = ""
    images: int = 0
    objects: int = 0
    epoch: int = 0
    epochs: int = 0
    checkpoint: str | None = None
    model_version: str | None = None
    scores: dict = field(default_factory=dict)
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("project", "run", "state", "reason", "images", "objects", "epoch",
                                               "epochs", "checkpoint", "model_version", "scores", "error",
                                               "started", "finished")}


# -- Label Studio's brush RLE -> mask -----------------------------------------------------------


class _Bits:
    def __init__(self, data: list[int]) -> None:
        self.bits = np.unpackbits(np.asarray(data, dtype=np.uint8))
        self.pos = 0

    def read(self, count: int) -> int:
        chunk = self.bits[self.pos:self.pos + count]
        if chunk.size < count:
            raise ValueError("the brush RLE ends early")
        self.pos += count
        return int(chunk.dot(1 << np.arange(count - 1, -1, -1, dtype=np.int64))) if count else 0


def decode_brush_rle(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio's brush RLE (see regions.py for its bit layout) -> HxW bool mask (the RGBA
    image's alpha channel, set where it is not 0)."""
    bits = _Bits(rle)
    count = bits.read(32)
    word = bits.read(5) + 1
    widths = [bits.read(4) + 1 for _ in range(4)]
    if count != height * width * 4:
        raise ValueError(f"the brush RLE holds {count} values, not {height}x{width}x4")
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        repeated = bits.read(1)
        end = i + 1 + bits.read(widths[bits.read(2)])
        if repeated:
            out[i:end] = bits.read(word)
        else:
            for j in range(i, end):
                out[j] = bits.read(word)
        i = end
    return out.reshape(height, width, 4)[:, :, 3] > 0


# -- annotations -> training records ------------------------------------------------------------


def task_objects(task: dict, image_key: str, where: str):
    """The objects of a task's newest non-cancelled annotation: brush masks and polygons of its
    image, as samkit.finetune objects (rectangles and keypoints are prompts, not masks)."""
    from samkit.finetune import object_from_mask, object_from_polygons

    annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not annotations:
        return []
    annotation = max(annotations, key=lambda a: (a.get("updated_at") or "", a.get("id") or 0))
    objects = []
    for number, region in enumerate(annotation.get("result") or []):
        kind, value = region.get("type"), region.get("value") or {}
        if kind not in ("brushlabels", "polygonlabels"):
            continue
        width, height = region.get("original_width"), region.get("original_height")
        labels = value.get(kind) or []
        label = labels[0] if labels else None
        name = f"annotation {annotation.get('id')} region {region.get('id') or number} ({label})"
        if not width or not height:
            raise TaskError(f"{where}, {name}: the region has no original_width/original_height")
        if kind == "brushlabels":
            try:
                mask = decode_brush_rle(value.get("rle") or [], int(height), int(width))
            except ValueError as exc:
                raise TaskError(f"{where}, {name}: the brush mask does not decode ({exc})") from None
            objects.append(object_from_mask(mask, label, name, where))
        else:
            points = np.asarray(value.get("points") or [], dtype=np.float64).reshape(-1, 2)
            polygon = points / 100.0 * [width, height]
            objects.append(object_from_polygons([polygon], (int(height), int(width)), label, name, where))
    return objects


# -- a JSON export file -> training records ----------------------------------------------------

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio names each uploaded file "<8 hex>-<name>"


def export_image_candidates(ref: str, export_dir: Path, images: Path | None) -> list[Path]:
    """Where the image of a task's data reference may be on disk: uploads (/data/upload/<project>/
    <8 hex>-<name>), local files (/data/local-files/?d=<path>), URLs and plain paths, looked up in
    `images` (also by the base name, with and without the upload prefix) or beside the export."""
    parsed = urlparse(ref)
    if parsed.path.startswith("/data/local-files") and "d" in parse_qs(parsed.query):
        relative = Path(unquote(parse_qs(parsed.query)["d"][0]))
    elif parsed.scheme in ("http", "https", "s3", "gs", "azure-blob") or parsed.path.startswith("/data/"):
        relative = Path(unquote(parsed.path).lstrip("/"))
    else:
        relative = Path(ref)
    names = [relative.name]
    stripped = _UPLOAD_PREFIX.sub("", relative.name)
    if stripped != relative.name:
        names.append(stripped)
    folders = [images] if images is not None else [export_dir]
    candidates = [relative] if relative.is_absolute() else []
    for folder in folders:
        if not relative.is_absolute():
            candidates.append(folder / relative)
        candidates.extend(folder / name for name in names)
    return list(dict.fromkeys(candidates))


def read_export(path: str | os.PathLike, images: str | os.PathLike | None = None, classes=None):
    """A Label Studio JSON export (Export > JSON: a list of tasks with their annotations) ->
    samkit.finetune LabelledImages: each task's newest annotation, its brush masks and polygons
    (as the Start Training path reads them over the API). The images are found in `images` (the
    folder the originals are in; uploaded files also by their name without Label Studio's
    prefix) or beside the export; a task whose image is not found is an error naming it.
    `classes`: the labels to keep. Tasks without such an annotation are left out."""
    from samkit import DatasetError
    from samkit.finetune import LabelledImage, select_classes
    from samkit.finetune.data import image_size

    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"Label Studio export not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{path} is not a readable Label Studio JSON export: {exc}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise DatasetError(f"{path} is not a Label Studio JSON export (Export > JSON): expected a list of tasks "
                           "with 'data'")
    image_dir = Path(images) if images is not None else None
    records = []
    for task in tasks:
        where = f"{path.name}: task {task.get('id')}"
        data = task["data"]
        key = "image" if isinstance(data.get("image"), str) else next(
            (k for k, v in data.items() if isinstance(v, str)), None)
        if key is None:
            continue
        try:
            objects = task_objects(task, key, where)
        except TaskError as exc:
            raise DatasetError(str(exc)) from None
        if not objects:
            continue
        candidates = export_image_candidates(data[key], path.parent, image_dir)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            hint = "" if image_dir is not None else " (pass the folder of the images as images= / --images)"
            raise DatasetError(f"{where}: image {data[key]!r} not found (tried "
                               f"{', '.join(str(c) for c in candidates)}){hint}")
        size = image_size(found, where)
        records.append(LabelledImage(str(found), tuple(objects), f"{where} ({found.name})", size))
    records = select_classes(records, classes, str(path))
    if not records:
        raise DatasetError(f"{path}: no task has an annotation with a brush mask or a polygon to train on")
    return records


class ProjectTrainer:
    """Background fine-tuning for a SamBackend, one run at a time."""

    def __init__(self, backend, settings: TrainingSettings | None = None) -> None:
        self.backend = backend
        self.settings = settings or TrainingSettings.from_env()
        self.jobs: dict[str, TrainingJob] = {}  # the latest run of each project
        self.runs: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._pending: dict[str, str] = {}  # project -> why it waits for the running job
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- protocol ---------------------------------------------------------------------------
    def on_webhook(self, data: dict) -> tuple[int, dict]:
        """(HTTP status, body) for a /webhook event."""
        action = data.get("action") if isinstance(data, dict) else None
        project = data.get("project") if isinstance(data, dict) else None
        pid = project_id(project.get("id") if isinstance(project, dict) else project)
        if action == "START_TRAINING":
            if pid is None:
                return 400, {"status": "error", "error": "START_TRAINING without a project id"}
            job = self.start(pid, "Start Training")
            return 201, {"status": "ok", "result": job.as_dict()}
        if action in TRAIN_EVENTS and self.settings.every and pid is not None:
            with self._lock:
                self._counts[pid] = self._counts.get(pid, 0) + 1
                due = self._counts[pid] >= self.settings.every
                if due:
                    self._counts[pid] = 0
            if due:
                job = self.start(pid, f"{self.settings.every} new annotations")
                return 201, {"status": "ok", "result": job.as_dict()}
        return 200, {"status": "ok", "action": action}

    def start(self, pid: str, reason: str) -> TrainingJob:
        """Start a run for the project, or (a run is going) queue one to follow it."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._pending[pid] = reason
                current = self.jobs.get(pid)
                if current is not None and current.state in ("queued", "running"):
                    return current
                job = TrainingJob(pid, self.runs.get(pid, 0) + 1, reason=reason)
                self.jobs[pid] = job
                return job
            job = self._new_job(pid, reason)
            self._thread = threading.Thread(target=self._work, args=(job,), name=f"samkit-train-{pid}", daemon=True)
            self._thread.start()
            return job

    def _new_job(self, pid: str, reason: str) -> TrainingJob:
        self.runs[pid] = self.runs.get(pid, 0) + 1
        job = TrainingJob(pid, self.runs[pid], reason=reason)
        self.jobs[pid] = job
        return job

    def _work(self, job: TrainingJob) -> None:
        while job is not None:
            self._train(job)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
                pid, reason = next(iter(self._pending.items()))
                del self._pending[pid]
                job = self._new_job(pid, reason)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no run is going (tests, shutdown); False on time-out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                thread = self._thread
            if thread is None:
                return True
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline and thread.is_alive():
                return False

    # -- one run ----------------------------------------------------------------------------
    def _train(self, job: TrainingJob) -> None:
        job.state, job.started = "running", time.time()
        try:
            records = self.project_records(job.project)
            job.images = len(records)
            job.objects = sum(len(r.objects) for r in records)
            self._fine_tune(job, records)
            job.state = "done"
            log.info("project %s: trained run %d on %d objects of %d tasks -> %s", job.project, job.run,
                     job.objects, job.images, job.model_version)
        except Exception as exc:  # reported in /training, never raised into the thread's void
            import samkit

            job.state = "failed"
            job.error = str(exc) if isinstance(exc, samkit.SamkitError) else f"{type(exc).__name__}: {exc}"
            log.error("project %s: training failed: %s", job.project, job.error)
        finally:
            job.finished = time.time()

    def project_records(self, pid: str):
        """The project's annotated tasks as samkit.finetune records (images fetched when read)."""
        from samkit.finetune import LabelledImage

        backend = self.backend
        source = backend.source(pid)
        tasks = self.export(pid, source)
        info = backend.projects.get(pid)
        config = backend.label_config(None, pid) if info is not None and info.label_config else None
        records = []
        for task in tasks:
            data = task.get("data") or {}
            key = config.images.get(config.default_image) if config is not None else None
            key = key or next((k for k, v in data.items() if isinstance(v, str)), None)
            if key is None or key not in data:
                continue
            where = f"project {pid}: task {task.get('id')}"
            objects = task_objects(task, key, where)
            if not objects:
                continue
            ref, task_id = data[key], task.get("id")
            records.append(LabelledImage(lambda ref=ref, task_id=task_id: backend.fetcher.get(ref, source, task_id),
                                         tuple(objects), where, tuple(objects[0].mask["size"])))
        if not records:
            raise TaskError(f"project {pid} has no annotation with a brush mask or a polygon to train on")
        return records

    def export(self, pid: str, source) -> list[dict]:
        """The project's tasks with their annotations, through Label Studio's export API."""
        if not source.base:
            raise TaskError("training needs Label Studio's URL and an API key to fetch the annotations: set "
                            "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, or connect the model again so /setup "
                            "sends them")
        fetcher = self.backend.fetcher
        url = f"{source.base}/api/projects/{pid}/export"
        params = {"exportType": "JSON", "download_all_tasks": "false"}
        try:
            headers = fetcher.tokens.headers(source, fetcher.session)
            response = fetcher.session.get(url, params=params, headers=headers, timeout=max(fetcher.timeout, 120))
        except requests.RequestException as exc:
            raise LabelStudioUnreachable(unreachable_message(source.base, exc, "to export the annotations")) from None
        if response.status_code != 200:
            raise TaskError(f"Label Studio answered HTTP {response.status_code} to {url} ({response.text[:200]}); "
                            "check LABEL_STUDIO_API_KEY")
        try:
            tasks = response.json()
        except ValueError as exc:
            raise TaskError(f"{url} did not answer JSON ({exc})") from None
        return [t for t in tasks if isinstance(t, dict)]

    def _fine_tune(self, job: TrainingJob, records) -> None:
        import samkit

        backend = self.backend
        base = backend.base_model
        folder = self.settings.root / f"project-{job.project}"
        folder.mkdir(parents=True, exist_ok=True)
        output = folder / f"tuned-{job.run}.pt"
        job.epochs = self.settings.epochs

        def progress(update) -> None:
            job.epoch = update.epoch

        result = samkit.finetune(
            base, records, output, epochs=self.settings.epochs, lr=self.settings.lr,
            val_fraction=0.2 if len(records) >= MIN_VALIDATION_IMAGES else 0.0,
            cache_dir=self.settings.root / "embeddings", overwrite=True, progress=False, callback=progress,
        )
        job.checkpoint = str(result.checkpoint)
        job.scores = {"before": result.before, "best": result.best, "best_epoch": result.best_epoch}
        job.model_version = f"{backend.base_model_version}-p{job.project}-ft{job.run}"
        backend.use_tuned(job.project, tuned_model(base, result.checkpoint), job.model_version)


def tuned_model(base, checkpoint: Path):
    """A model answering with the tuned prompt encoder and mask decoder of `checkpoint` while
    sharing `base`'s image encoder (the same module: no second copy, and the same embedding-cache
    key, so cached embeddings serve both)."""
    import copy

    import torch

    from samkit.modeling.sam import Sam

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    prompt_encoder = copy.deepcopy(base.prompt_encoder)
    mask_decoder = copy.deepcopy(base.mask_decoder)
    for module, prefix in ((prompt_encoder, "prompt_encoder."), (mask_decoder, "mask_decoder.")):
        for name in ("_prepared_cache", "_dense_pe_cache"):
            if hasattr(module, name):
                setattr(module, name, None)
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    model = Sam(base.image_encoder, prompt_encoder, mask_decoder, arch=base.arch)
    model.eval().requires_grad_(False).to(base.device)
    model.compute_dtype = base.compute_dtype
    model.checkpoint_path = base.checkpoint_path
    model.tuned_checkpoint = str(checkpoint)
    return model


def parse_event(body: bytes) -> dict:
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
