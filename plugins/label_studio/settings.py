"""Backend settings: environment variables, overridable by `samkit label-studio serve` flags.

| variable | default | meaning |
|---|---|---|
| SAMKIT_MODEL | mobile_sam | model name (mobile_sam, vit_b, vit_l, vit_h) or a checkpoint path |
| SAMKIT_CHECKPOINT | | checkpoint file; wins over SAMKIT_MODEL (a model name here still works, deprecated) |
| SAMKIT_DEVICE | auto | cpu, cuda, cuda:1, mps; auto picks a GPU when there is one |
| SAMKIT_DTYPE | float32 | float32, bfloat16 or float16 compute (float16 needs a GPU: on a CPU use bfloat16) |
| SAMKIT_LS_CLICK_DTYPE | auto | precision of a click's decoder work: auto (bfloat16 on a CPU with bfloat16 dot products, AVX-512 BF16 or AMX; else float32), float32 (the official masks to float32 rounding), bfloat16 (masks at IoU >= 0.98 against float32, ~25% faster clicks there). Batch pre-labelling always decodes in float32 |
| SAMKIT_LS_THREADS | 1 on a CPU | PyTorch CPU threads; 0: all cores. More threads wait for each other when other work shares the CPU: a click took 0.4-0.6 s with 1 and 2-5 s with 2 on a busy 2-core VM (benchmarks/RESULTS.md) |
| LABEL_STUDIO_URL | | where the backend fetches /data/... images and project tasks |
| LABEL_STUDIO_API_KEY | | legacy token or personal access token |
| SAMKIT_LS_BASIC_AUTH_USER / _PASS | | require HTTP basic auth on every endpoint (/health too: send it there as well) |
| SAMKIT_LS_CACHE_SIZE | 32 | image embeddings kept in memory (about 4 MiB each) |
| SAMKIT_LS_CACHE_DIR | | also keep embeddings on disk here (survive restarts) |
| SAMKIT_LS_CACHE_DIR_MB | 2048 | most disk space the embeddings there take, MiB (least recently used deleted first) |
| SAMKIT_LS_IMAGE_CACHE_MB | 256 | decoded task images kept in memory, MiB (least recently used out) |
| SAMKIT_LS_OUTPUT | auto | auto (every brush/polygon tool of the config), brush, polygon |
| SAMKIT_LS_MODEL_VERSION | samkit-<version>-<model> | model_version reported to Label Studio |
| SAMKIT_LS_MAX_REQUEST_MB | 200 | largest request body accepted (413 above) |
| SAMKIT_LS_MAX_IMAGE_MB | 100 | largest image download accepted |
| SAMKIT_LS_DOWNLOAD_TIMEOUT | 30 | seconds per image download |
| LOCAL_FILES_DOCUMENT_ROOT | | read /data/local-files/?d=... from this folder directly |
| SAMKIT_LS_BATCH | auto | batch pre-labelling: auto (masks for a task's rectangles, else segment everything), boxes (only tasks with rectangles), off |
| SAMKIT_LS_POINTS_PER_SIDE | 32 on a GPU, 16 on CPU | segment-everything grid for batch pre-labelling |
| SAMKIT_LS_PRED_IOU_THRESH | the model family's (SAM 1: 0.88) | segment-everything: keep masks with predicted IoU above |
| SAMKIT_LS_STABILITY_SCORE_THRESH | 0.95 | segment-everything: keep masks with stability score at least (was SAMKIT_LS_STABILITY_THRESH, deprecated) |
| SAMKIT_LS_TEXT_MODEL | IDEA-Research/grounding-dino-tiny | text prompts (a `<TextArea>` in the config): the GroundingDINO or OWLv2 detector, a Hugging Face id or a local folder |
| SAMKIT_LS_BOX_THRESHOLD | 0.25 | text prompts: keep the detector's boxes scoring above this |
| SAMKIT_LS_TEXT_THRESHOLD | 0.25 | text prompts: the matched phrase's score threshold (GroundingDINO) |
| SAMKIT_LS_MAX_REGIONS | 100 | segment-everything: most masks per task (best first) |
| SAMKIT_LS_MIN_AREA | 25 | drop masks / polygon parts smaller than this many pixels, fill smaller holes |
| SAMKIT_LS_MAX_POLYGONS | 20 | most polygon regions per mask (largest parts first; a warning names what is dropped) |
| SAMKIT_LS_POLYGON_TOLERANCE | 1.0 | polygon simplification, pixels |
| SAMKIT_LS_MAX_POLYGON_POINTS | 2000 | most polygon points per mask: a ragged mask is simplified more coarsely (a warning says how much) |
| SAMKIT_LS_INTERACTIVE_THREADS | 4 | interactive requests worked on at once (more wait) |
| SAMKIT_LS_BATCH_THREADS | 1 | batch pre-labelling requests worked on at once |
| SAMKIT_LS_LOG_LEVEL | INFO | logging level |
"""  # noqa: E501 (a markdown table: each row must stay one line; `serve --help` prints it)

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from samkit.options import GeneratorOptions, deprecated

# Old spellings that still work, with a deprecation message: environment variable -> new one,
# and Settings field -> new one.
OLD_VARIABLES = {"SAMKIT_LS_STABILITY_THRESH": "SAMKIT_LS_STABILITY_SCORE_THRESH"}
OLD_FIELDS = {"stability_thresh": "stability_score_thresh"}


def _env(name: str, default=None, *alts: str):
    for key in (name, *alts):
        value = os.environ.get(key)
        if value not in (None, ""):
            return value
    return default


def _renamed(name: str) -> str:
    """`name`, or its old spelling when only that is set (with a deprecation message)."""
    for old, new in OLD_VARIABLES.items():
        if new == name and _env(name) is None and _env(old) is not None:
            deprecated(old, name, stacklevel=4)
            return old
    return name


def env_number(name: str, kind: type, default=None, *alts: str):
    """A numeric environment variable as `kind` (int or float), or `default` when unset; a value
    that is not a number is one clear error naming the variable."""
    value = _env(name, None, *alts)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        from samkit import SamkitError

        what = "an integer" if kind is int else "a number"
        raise SamkitError(f"{name} must be {what}, got {value!r}") from None


@dataclass
class Settings:
    model: str | None = None  # None: samkit.models.model_source's default
    checkpoint: str | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None  # None: 1 on a CPU (torch_threads); 0: all cores
    click_dtype: str = "auto"  # a click's decoder precision (samkit.build.resolve_decoder_dtype)
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    cache_size: int = 32
    cache_dir: str | None = None
    cache_dir_mb: float = 2048.0
    image_cache_mb: float = 256.0
    output: str = "auto"
    model_version: str | None = None
    max_request_mb: float = 200.0
    max_image_mb: float = 100.0
    download_timeout: float = 30.0
    local_files_root: str | None = None
    batch: str = "auto"
    points_per_side: int | None = None  # None: 32 on a GPU, 16 on CPU
    pred_iou_thresh: float | None = None  # None: the model family's default
    stability_score_thresh: float = GeneratorOptions.default("stability_score_thresh")
    text_model: str | None = None  # None: samkit.annotate's default text detector (GroundingDINO tiny)
    box_threshold: float = 0.25
    text_threshold: float = 0.25
    max_regions: int = 100
    min_area: int = 25
    max_polygons: int = 20
    max_polygon_points: int = 2000
    polygon_tolerance: float = 1.0
    interactive_threads: int = 4
    batch_threads: int = 1
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        s = cls(
            model=_env("SAMKIT_MODEL"),
            checkpoint=_env("SAMKIT_CHECKPOINT"),
            device=_env("SAMKIT_DEVICE"),
            dtype=_env("SAMKIT_DTYPE"),
            threads=env_number("SAMKIT_LS_THREADS", int),
            click_dtype=_env("SAMKIT_LS_CLICK_DTYPE", "auto"),
            label_studio_url=_env("LABEL_STUDIO_URL", None, "LABEL_STUDIO_HOST"),
            label_studio_api_key=_env("LABEL_STUDIO_API_KEY", None, "LABEL_STUDIO_ACCESS_TOKEN"),
            basic_auth_user=_env("SAMKIT_LS_BASIC_AUTH_USER", None, "BASIC_AUTH_USER"),
            basic_auth_pass=_env("SAMKIT_LS_BASIC_AUTH_PASS", None, "BASIC_AUTH_PASS"),
            cache_size=env_number("SAMKIT_LS_CACHE_SIZE", int, 32),
            cache_dir=_env("SAMKIT_LS_CACHE_DIR"),
            cache_dir_mb=env_number("SAMKIT_LS_CACHE_DIR_MB", float, 2048),
            image_cache_mb=env_number("SAMKIT_LS_IMAGE_CACHE_MB", float, 256),
            output=_env("SAMKIT_LS_OUTPUT", "auto"),
            model_version=_env("SAMKIT_LS_MODEL_VERSION"),
            max_request_mb=env_number("SAMKIT_LS_MAX_REQUEST_MB", float, 200),
            max_image_mb=env_number("SAMKIT_LS_MAX_IMAGE_MB", float, 100),
            download_timeout=env_number("SAMKIT_LS_DOWNLOAD_TIMEOUT", float, 30),
            local_files_root=_env("LOCAL_FILES_DOCUMENT_ROOT"),
            batch=_env("SAMKIT_LS_BATCH", "auto"),
            points_per_side=env_number("SAMKIT_LS_POINTS_PER_SIDE", int),
            pred_iou_thresh=env_number("SAMKIT_LS_PRED_IOU_THRESH", float),
            stability_score_thresh=env_number(_renamed("SAMKIT_LS_STABILITY_SCORE_THRESH"), float,
                                              GeneratorOptions.default("stability_score_thresh")),
            text_model=_env("SAMKIT_LS_TEXT_MODEL"),
            box_threshold=env_number("SAMKIT_LS_BOX_THRESHOLD", float, 0.25),
            text_threshold=env_number("SAMKIT_LS_TEXT_THRESHOLD", float, 0.25),
            max_regions=env_number("SAMKIT_LS_MAX_REGIONS", int, 100),
            min_area=env_number("SAMKIT_LS_MIN_AREA", int, 25),
            max_polygons=env_number("SAMKIT_LS_MAX_POLYGONS", int, 20),
            max_polygon_points=env_number("SAMKIT_LS_MAX_POLYGON_POINTS", int, 2000),
            polygon_tolerance=env_number("SAMKIT_LS_POLYGON_TOLERANCE", float, 1.0),
            interactive_threads=env_number("SAMKIT_LS_INTERACTIVE_THREADS", int, 4),
            batch_threads=env_number("SAMKIT_LS_BATCH_THREADS", int, 1),
            log_level=_env("SAMKIT_LS_LOG_LEVEL", "INFO"),
        )
        names = {f.name for f in fields(cls)}
        for old, new in OLD_FIELDS.items():
            if old in overrides:
                deprecated(f"Settings {old}", new)
                value = overrides.pop(old)
                if overrides.get(new) is None:
                    overrides[new] = value
        for key, value in overrides.items():
            if key not in names:
                raise TypeError(f"unknown setting {key!r}")
            if value is not None:
                setattr(s, key, value)
        if s.device and s.device.lower() == "auto":  # the documented default, as a value
            s.device = None
        s.validate()
        return s

    def validate(self) -> None:
        from samkit import SamkitError

        if self.output not in ("auto", "brush", "polygon"):
            raise SamkitError(f"SAMKIT_LS_OUTPUT must be auto, brush or polygon, not {self.output!r}")
        if self.batch not in ("auto", "boxes", "off"):
            raise SamkitError(f"SAMKIT_LS_BATCH must be auto, boxes or off, not {self.batch!r}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SamkitError("set both SAMKIT_LS_BASIC_AUTH_USER and SAMKIT_LS_BASIC_AUTH_PASS, or neither")
        if self.threads is not None and self.threads < 0:
            raise SamkitError("SAMKIT_LS_THREADS must be 0 (all cores) or more")
        if self.cache_size < 1:
            raise SamkitError("SAMKIT_LS_CACHE_SIZE must be at least 1")
        if self.points_per_side is not None and self.points_per_side < 1:
            raise SamkitError("SAMKIT_LS_POINTS_PER_SIDE must be at least 1")
        if self.max_polygons < 1:
            raise SamkitError("SAMKIT_LS_MAX_POLYGONS must be at least 1")
        if self.max_polygon_points < 3:
            raise SamkitError("SAMKIT_LS_MAX_POLYGON_POINTS must be at least 3 (a polygon has 3 points or more)")
        if self.cache_dir_mb < 1:
            raise SamkitError("SAMKIT_LS_CACHE_DIR_MB must be at least 1")
        if self.image_cache_mb < 0:
            raise SamkitError("SAMKIT_LS_IMAGE_CACHE_MB must be 0 or more")
        if self.dtype:
            self._check_dtype()
        self.click_decoder_dtype()  # a bad value is an error at start, not at the first click
        url = self.label_studio_url
        if url and not url.lower().startswith(("http://", "https://")):
            raise SamkitError(f"LABEL_STUDIO_URL must start with http:// or https://, got {url!r} "
                              f"(for example http://{url})")
        if self.cache_dir:
            # checked now: a folder that cannot be made or written would fail the first click
            probe = os.path.join(self.cache_dir, f".samkit-write-test-{os.getpid()}")
            try:
                os.makedirs(self.cache_dir, exist_ok=True)
                with open(probe, "wb"):
                    pass
                os.remove(probe)
            except OSError as exc:
                raise SamkitError(f"SAMKIT_LS_CACHE_DIR {self.cache_dir!r} cannot be used ({exc.strerror or exc}); "
                                  "give a writable folder, "
                                  "or leave it unset to keep embeddings in memory only") from None

    def _check_dtype(self) -> None:
        import torch

        from samkit import SamkitError
        from samkit.build import resolve_device, resolve_dtype

        # A server is started once and clicked on all day: refuse what would make every click
        # slow (core only warns: float16 is correct on a CPU, just several times slower).
        if resolve_dtype(self.dtype) == torch.float16 and resolve_device(self.device).type == "cpu":
            raise SamkitError(f"SAMKIT_DTYPE={self.dtype} on a CPU makes every click many times slower "
                              "(CPUs have no fast float16 kernels): use bfloat16 or float32 on a CPU, "
                              "or float16 with a GPU (SAMKIT_DEVICE=cuda)")

    def click_decoder_dtype(self):
        """The torch dtype of a click's decoder work (SAMKIT_LS_CLICK_DTYPE) on this device."""
        from samkit import SamkitError
        from samkit.build import resolve_decoder_dtype, resolve_device

        try:
            return resolve_decoder_dtype(self.click_dtype, resolve_device(self.device))
        except SamkitError as exc:
            raise SamkitError(f"SAMKIT_LS_CLICK_DTYPE={self.click_dtype}: {exc}") from None

    def torch_threads(self, device_type: str) -> int | None:
        """PyTorch's CPU threads for the backend: the setting, else 1 when the model runs on the CPU
        (None: leave PyTorch's default, all cores).

        One thread, because a click is many small operations: with more threads each waits for
        the others at every step, and when anything else runs on the machine (an annotator's
        browser, a second backend, a shared VM) one of them is always late. Measured on a click
        as Label Studio sends it (benchmarks/bench_label_studio_load.py, RESULTS.md): 0.4-0.6 s
        with 1 thread against 2-5 s with 2 on a busy 2-core VM; issue 23's report on a busy AVX2
        CPU, 175 ms against ~1 s. Batch pre-labelling is slower with one thread on an idle
        machine; SAMKIT_LS_THREADS=0 gives it every core."""
        if self.threads is not None:
            return self.threads or None
        return 1 if device_type == "cpu" else None

    def batch_signature(self) -> tuple:
        """The settings a batch answer depends on."""
        return (self.points_per_side, self.pred_iou_thresh, self.stability_score_thresh, self.max_regions,
                self.min_area, self.max_polygons, self.max_polygon_points, self.polygon_tolerance, self.output,
                self.text_model, self.box_threshold, self.text_threshold)

    @property
    def model_source(self) -> str:
        """What to load: SAMKIT_CHECKPOINT (--checkpoint), else SAMKIT_MODEL (--model), else mobile_sam;
        read with the meaning every samkit front end gives them (samkit.models)."""
        from samkit.models import model_source

        return model_source(self.model, self.checkpoint, environ={})

    @property
    def stability_thresh(self) -> float:
        """Deprecated name of stability_score_thresh."""
        deprecated("Settings.stability_thresh", "Settings.stability_score_thresh")
        return self.stability_score_thresh
