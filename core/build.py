"""`load_model`: a model by name (downloaded once and verified) or from a file, built from its registry
record (registry.py); reading and checking checkpoint files; device and dtype choice."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, SamkitError
from .registry import DEFAULT_MODEL, FAMILIES, Checkpoint, ModelSpec, aliases, lookup, recognise
from .registry import MODELS as _MODELS
from .utils.files import atomic_output

# Views of the registry under the names this module always had (the command line, tests and
# users read them; fetch_checkpoint looks the file up here).
CHECKPOINTS: dict[str, Checkpoint] = {name: spec.checkpoint for name, spec in _MODELS.items()}
MODEL_ALIASES: dict[str, str] = aliases()

__all__ = [
    "CHECKPOINTS", "DEFAULT_MODEL", "MODEL_ALIASES", "Checkpoint", "build_sam", "cache_dir", "fetch_checkpoint",
    "load_model", "read_state_dict", "resolve_device", "resolve_dtype", "verify_checkpoint",
]


def build_sam(arch: str) -> nn.Module:
    """An untrained model of the given registry name ("vit_b", "mobile_sam", ...) or alias."""
    spec = lookup(arch)
    if spec is None:
        raise CheckpointError(f"unknown architecture {arch!r}; expected one of {', '.join(_MODELS)}")
    return spec.build()


def cache_dir() -> Path:
    """Where downloaded checkpoints live: $SAMKIT_HOME, else the user cache directory."""
    env = os.environ.get("SAMKIT_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("samkit"))


def _unknown_model(name_or_path) -> str:
    return (f"no checkpoint file at {str(name_or_path)!r} and it is not a known model name; "
            f"use a path to a .pth/.pt file or one of: {', '.join(_MODELS)}")


_REACHABLE: dict[str, tuple[float, bool]] = {}  # host -> (when checked, reachable)


def host_reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the URL's host opens (remembered for a minute)."""
    import socket
    import time
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    key = f"{parts.hostname}:{port}"
    checked = _REACHABLE.get(key)
    if checked is not None and time.monotonic() - checked[0] < 60:
        return checked[1]
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
        ok = True
    except OSError:
        ok = False
    _REACHABLE[key] = (time.monotonic(), ok)
    return ok


def checkpoint_problem(name_or_path: str | os.PathLike, timeout: float = 3.0) -> str | None:
    """Why load_model(name_or_path) could not even get its file, found without loading anything:
    None when the file exists (a path, or a name already in the cache) or its download server
    answers; else the one-line message load_model would end with, naming what to do. For checks
    that must be cheap and early (a form's validation) rather than a first step of a long run."""
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_file():
        return None
    model = lookup(str(name_or_path))
    if model is None:
        return _unknown_model(name_or_path)
    spec = CHECKPOINTS[model.name]  # the view fetch_checkpoint reads
    cached = cache_dir() / spec.filename
    if cached.is_file() or host_reachable(spec.url, timeout):
        return None
    return (f"{spec.filename} is not in {cached.parent} and {spec.url.split('/')[2]} cannot be reached to download "
            f"it: download {spec.url} elsewhere and put it at {cached}, or give the file's path as the model")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, or the best available: CUDA, then Apple MPS, then CPU."""
    if device is not None:
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise CheckpointError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise CheckpointError(
                f"device {device!r} asked for, but this torch build sees no CUDA GPU; use device='cpu'"
            )
        if resolved.type == "mps" and not torch.backends.mps.is_available():
            raise CheckpointError(f"device {device!r} asked for, but Apple MPS is not available; use device='cpu'")
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """float32 (default), bfloat16 or float16, from a torch dtype or its usual names."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        resolved = _DTYPES.get(str(dtype).lower().replace("torch.", ""))
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise CheckpointError(f"unsupported dtype {dtype!r}: use float32, bfloat16 or float16")
    return resolved


def cpu_has_bfloat16_dot_products() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), where bfloat16
    products run at about twice the float32 rate; elsewhere they are converted and gain nothing."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_decoder_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The decoder precision a Predictor is asked for: None or float32 (exact), bfloat16 (the
    reduced-precision mode), or "auto": bfloat16 on a CPU with bfloat16 dot products, else
    float32 (on a GPU the decoder's click is not where the time goes). float16 only on a GPU."""
    if isinstance(dtype, str) and dtype.lower() == "auto":
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bfloat16_dot_products() else torch.float32
    try:
        resolved = resolve_dtype(dtype)
    except CheckpointError as exc:
        raise SamkitError(f"decoder_dtype: {exc}; or auto") from None
    if resolved == torch.float16 and device.type == "cpu":
        raise SamkitError("decoder_dtype float16 needs a GPU (CPUs have no fast float16 kernels): "
                              "use bfloat16 or float32 on a CPU")
    return resolved


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    download: bool = True,
) -> nn.Module:
    """Load a SAM-family model in eval mode.

    `name_or_path` is a file (architecture inferred from its state_dict) or a model name
    ("mobile_sam", "vit_b", "vit_l", "vit_h", an official file name or an Ultralytics name),
    which is downloaded once into `cache_dir()` and verified. Raises CheckpointError with a
    message that says what to do when the file is missing, corrupt, or of another model.
    """
    target_device = resolve_device(device)
    compute_dtype = resolve_dtype(dtype)
    if compute_dtype == torch.float16 and target_device.type == "cpu":
        # CPUs have no fast float16 matmul kernels: float16 runs several times slower than
        # float32 there (benchmarks/RESULTS.md, "Design measurements"). Allowed (it is correct),
        # but never silently.
        warnings.warn(
            "float16 on a CPU is several times slower than float32; use dtype='bfloat16' for reduced "
            "precision on a CPU, or float16 on a GPU", RuntimeWarning, stacklevel=2,
        )
    path = Path(os.fspath(name_or_path)).expanduser()
    requested = None
    if path.is_file():
        checkpoint_path = path
    else:
        requested = lookup(str(name_or_path))
        if requested is None:
            raise CheckpointError(_unknown_model(name_or_path))
        checkpoint_path = fetch_checkpoint(requested.name, download=download)
    state_dict = read_state_dict(checkpoint_path)
    spec = infer_spec(state_dict, checkpoint_path)
    if requested is not None and spec.name != requested.name:
        # a cached file with no pinned hash (SAM 2's) may be another model's: never load it silently
        raise CheckpointError(
            f"{checkpoint_path} holds {spec.name}, not {requested.name}: delete it and run `samkit download "
            f"{requested.name}` (or put the right file there)"
        )
    model = spec.build()
    load_weights(model, model_weights(state_dict, spec, checkpoint_path), checkpoint_path)
    model.eval().requires_grad_(False)
    model.to(target_device)
    model.compute_dtype = compute_dtype
    model.checkpoint_path = str(checkpoint_path)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, read without running any code it might contain."""
    try:
        # weights_only: a checkpoint is data; never let it execute code.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler names the class it refused ("Unsupported global:
        # GLOBAL module.Name"); any other refusal ("Unsupported operand 255") means the bytes
        # are not a pickle of tensors at all: an image, a NumPy file, a web page, ...
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise CheckpointError(
                f"{path} holds Python objects besides tensors ({refused.group(1)}), which samkit refuses to "
                "unpickle (a checkpoint must not run code). Re-save it as a plain state_dict: "
                "torch.save(model.state_dict(), path)"
            ) from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # torch.load fails in many ways on a damaged file (IndexError, EOFError, ...)
        raise _unreadable(path, exc) from None
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        loaded = loaded["model"]
    elif isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(
            f"{path} holds no state_dict of tensors; expected "
            + ", or ".join(family.checkpoint_kind for family in FAMILIES.values())
        )
    if any(k.startswith("model.") for k in loaded) and not any(k.startswith("image_encoder.") for k in loaded):
        loaded = {k.removeprefix("model."): v for k, v in loaded.items()}
    return loaded


# What a file that is not a checkpoint usually is, by its first bytes.
_FILE_SIGNATURES = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x93NUMPY", "a NumPy array file"),
    (b"<", "an HTML or XML document (a web page saved instead of the download?)"),
    (b"{", "a JSON document"),
    (b"\x1f\x8b", "a gzip archive"),
)


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    try:
        with open(path, "rb") as f:
            head = f.read(16).lstrip()
    except OSError:
        head = b""
    kind = next((name for signature, name in _FILE_SIGNATURES if head.startswith(signature)), None)
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        # torch's own words for this ("failed finding central directory. This is an internal
        # miniz error...") run on for three sentences; the cause is simple: the end is missing
        return CheckpointError(
            f"cannot read checkpoint {path}: it is truncated ({path.stat().st_size:,} bytes of a PyTorch zip archive "
            "whose end is missing: an interrupted download or copy). Download it again (samkit download MODEL) "
            "or pass the complete file."
        )
    if kind is None and head and all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        kind = f"a text file (it starts {head.decode('ascii').splitlines()[0]!r})"
    if kind is not None:
        reason = f"it is {kind}, not a PyTorch weights file"
    else:
        text = str(exc).strip()
        # torch's weights-only message opens with a paragraph about PyTorch 2.6; its last
        # specific line ("Unsupported operand 35") is what went wrong
        lines = [
            line
            for line in text.splitlines()
            if line.strip() and not line.startswith(("Weights only", "Please file", "Check the doc"))
        ]
        detail = lines[-1] if lines else text.splitlines()[0] if text else type(exc).__name__
        detail = detail.split(". ")[0].rstrip(".")  # its first sentence, never one cut mid-way
        reason = f"it is truncated, corrupt or not a PyTorch weights file ({detail.strip()})"
    return CheckpointError(
        f"cannot read checkpoint {path}: {reason}. Download it again (samkit download MODEL) or pass the right file."
    )


def infer_spec(state_dict: dict[str, torch.Tensor], path: Path) -> ModelSpec:
    """The registry record of the model a state_dict holds, from its keys and shapes."""
    try:
        spec = recognise(state_dict)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if spec is None:
        sample = ", ".join(list(state_dict)[:3])
        known = ", ".join(sorted({s.checkpoint.filename for s in _MODELS.values()}))
        kinds = ", nor ".join(family.checkpoint_kind for family in FAMILIES.values())
        raise CheckpointError(
            f"{path} is not {kinds}: no model family samkit knows recognises its keys (first keys: "
            f"{sample}). samkit loads {known} and Ultralytics' names for them"
        )
    return spec


def infer_arch(state_dict: dict[str, torch.Tensor], path: Path) -> str:
    """The registry name of the model a state_dict holds (see infer_spec)."""
    return infer_spec(state_dict, path).name


def drop_ignored(state_dict: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The state_dict without the keys the model's family accepts but images do not use."""
    prefixes = spec.family.ignored_prefixes
    if not prefixes:
        return state_dict
    return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}


def model_weights(state_dict: dict[str, torch.Tensor], spec: ModelSpec, path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state_dict as the model's `load_state_dict` takes it: the family's ignored keys
    dropped and its keys renamed by the family's hook (Family.rename_keys)."""
    state_dict = drop_ignored(state_dict, spec)
    rename = spec.family.rename_keys
    return state_dict if rename is None else rename(state_dict, path)


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Copy the state_dict into the model, or raise naming every missing/unexpected/misshapen key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshapen:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshapen)):
            if items:
                shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        raise CheckpointError(f"{path} does not fit the {model.arch} architecture: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def fetch_checkpoint(arch: str, download: bool = True) -> Path:
    """Path of the official checkpoint of model `arch` (a registry name) in the cache, downloading
    and verifying it once.

    A file already there under the official name (downloaded by samkit, or copied in by hand) is
    checked against the official hash the first time it is used; a small marker beside it
    remembers that it passed, for as long as its size and modification time stay the same."""
    spec = CHECKPOINTS[arch]
    directory = cache_dir()
    path = directory / spec.filename
    if path.is_file():
        if not _verified_before(path):
            try:
                verify_checkpoint(path, spec)
            except CheckpointError as exc:
                raise CheckpointError(
                    f"{path} is not the official {spec.filename}: {exc}. Delete it and run `samkit download "
                    f"{arch}` (or put the right file there); to use this file anyway, pass its path as the model"
                ) from None
            _remember_verified(path)
        return path
    if not download:
        raise CheckpointError(f"{spec.filename} is not in {directory}; download it with `samkit download {arch}`")
    directory.mkdir(parents=True, exist_ok=True)
    # Downloaded and verified beside the final name: only a verified file ever gets that name.
    with atomic_output(path, durable=True) as partial:
        try:
            _download(spec.url, partial)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CheckpointError(
                f"could not download {spec.filename} from {spec.url} ({reason}). If this machine is offline, "
                f"download that URL elsewhere and either put the file at {path} or pass its path: "
                f"samkit.load_model('/path/to/{spec.filename}') / --model /path/to/{spec.filename}"
            ) from None
        try:
            verify_checkpoint(partial, spec)
        except CheckpointError as exc:
            raise CheckpointError(f"the download from {spec.url} is not the official file: {exc}") from None
    _remember_verified(path)
    return path


def _verified_marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.samkit-verified")


def _file_identity(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _verified_before(path: Path) -> bool:
    """Whether `path` passed verify_checkpoint as it is now (same size and modification time)."""
    import json

    try:
        return json.loads(_verified_marker(path).read_text()) == _file_identity(path)
    except (OSError, ValueError):
        return False


def _remember_verified(path: Path) -> None:
    import json

    try:
        with atomic_output(_verified_marker(path)) as tmp:
            tmp.write_text(json.dumps(_file_identity(path)))
    except OSError:  # a read-only cache: the file is checked again next time, nothing worse
        pass


def verify_checkpoint(path: Path, spec: Checkpoint) -> None:
    """Check a file (a download, or one copied into the cache) against what is known of the
    official one."""
    if spec.md5_prefix is not None:
        digest = _file_digest(path, hashlib.md5())
        if not digest.startswith(spec.md5_prefix):
            raise CheckpointError(
                f"{spec.filename} has MD5 {digest}, which does not start with {spec.md5_prefix} as the "
                "official file name says: the file is corrupt or another file"
            )
    if spec.md5 is not None:
        digest = _file_digest(path, hashlib.md5())
        if digest != spec.md5:
            raise CheckpointError(
                f"{spec.filename} has MD5 {digest}, expected {spec.md5}: the file is corrupt or another file"
            )
    if spec.git_blob_sha1 is not None:
        blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
        digest = _file_digest(path, blob)
        if digest != spec.git_blob_sha1:
            raise CheckpointError(
                f"{spec.filename} has git blob SHA-1 {digest}, expected {spec.git_blob_sha1}: "
                "the file is corrupt or another file"
            )


def _file_digest(path: Path, hasher: "hashlib._Hash") -> str:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _download(url: str, destination: Path) -> None:
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "samkit"})
    with urllib.request.urlopen(request, timeout=30) as response, open(destination, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    if destination.stat().st_size == 0:
        raise OSError("empty response")
