"""Which model to load, and one loaded copy of it per process, for every front end.

The model a front end uses when none is named comes from the environment, with one meaning
everywhere (the core command line, the GIS tool, the Label Studio backend, the FiftyOne plugin):

| variable | meaning |
|---|---|
| SAMKIT_CHECKPOINT | a checkpoint file; wins over SAMKIT_MODEL |
| SAMKIT_MODEL | a model name (mobile_sam, vit_b, ...) or a checkpoint file |
| SAMKIT_DEVICE | cpu, cuda, cuda:1, mps; unset or auto: the best available |
| SAMKIT_DTYPE | float32 (default), bfloat16 or float16 |

A model named explicitly (an argument, a flag, an operator's field) wins over the environment.
A model name in SAMKIT_CHECKPOINT still works (FiftyOne read it as "name or path") but is
deprecated: name models in SAMKIT_MODEL.

`get_model` returns a loaded model from `MODEL_CACHE`, which keeps the `max_models` (2) models
used last per process, by checkpoint (name, or file path and its size and modification time),
device and dtype: a server or a worker that runs many jobs loads each checkpoint once.

Standard library only at import time (torch is imported when a model is loaded).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from .options import deprecated

CHECKPOINT_ENV = "SAMKIT_CHECKPOINT"
MODEL_ENV = "SAMKIT_MODEL"
DEVICE_ENV = "SAMKIT_DEVICE"
DTYPE_ENV = "SAMKIT_DTYPE"
#: the variables get_model reads, in the order they are looked at
ENVIRONMENT = (CHECKPOINT_ENV, MODEL_ENV, DEVICE_ENV, DTYPE_ENV)

#: how many loaded models MODEL_CACHE keeps (a model is 40 MB to 2.5 GB)
MAX_MODELS = 2


def _given(value: Any) -> str | None:
    """A setting's value, or None when it is unset or blank."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def model_source(model: Any = None, checkpoint: Any = None, environ: Mapping[str, str] | None = None) -> str:
    """What to load (`load_model`'s first argument): `checkpoint` (a file), else `model` (a name or
    a file), else $SAMKIT_CHECKPOINT, else $SAMKIT_MODEL, else the registry's default model.

    `environ` replaces os.environ (FiftyOne passes its plugin secrets). A model name given as a
    checkpoint is used as that name, with a deprecation message."""
    env = os.environ if environ is None else environ
    for value, is_checkpoint in ((checkpoint, True), (model, False), (env.get(CHECKPOINT_ENV), True),
                                 (env.get(MODEL_ENV), False)):
        value = _given(value)
        if value is None:
            continue
        if is_checkpoint and not Path(value).expanduser().exists():
            from .registry import lookup

            if lookup(value) is not None:
                deprecated(f"a model name in {CHECKPOINT_ENV} ({value})",
                           f"{MODEL_ENV}={value}; {CHECKPOINT_ENV} is a checkpoint file's path")
        return value
    from .registry import DEFAULT_MODEL

    return DEFAULT_MODEL


def device_setting(device: Any = None, environ: Mapping[str, str] | None = None) -> str | None:
    """`device`, else $SAMKIT_DEVICE; None (the best available) when neither is set or it is 'auto'."""
    env = os.environ if environ is None else environ
    value = _given(device) or _given(env.get(DEVICE_ENV))
    return None if value is None or value.lower() == "auto" else value


def dtype_setting(dtype: Any = None, environ: Mapping[str, str] | None = None) -> Any:
    """`dtype` (a name or a torch dtype), else $SAMKIT_DTYPE; None (float32) when neither is set."""
    if dtype is not None and not isinstance(dtype, str):
        return dtype  # a torch.dtype
    env = os.environ if environ is None else environ
    return _given(dtype) or _given(env.get(DTYPE_ENV))


class ModelKey(NamedTuple):
    """What makes two loaded models the same: the checkpoint (registry name, or resolved file path
    with its size and modification time, so a replaced file is loaded again), device and dtype."""

    checkpoint: str
    device: str
    dtype: str


class ModelCache:
    """Loaded models, at most `max_models`, the least recently used dropped first. Thread-safe;
    a model is loaded once even when two threads ask for it at the same time."""

    def __init__(self, max_models: int = MAX_MODELS) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        self.max_models = max_models
        self._models: OrderedDict[ModelKey, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a checkpoint was read (cache hits do not count)

    @staticmethod
    def key(source: str, device: Any = None, dtype: Any = None) -> ModelKey:
        from .build import resolve_device, resolve_dtype
        from .registry import lookup

        path = Path(os.fspath(source)).expanduser()
        if path.is_file():  # load_model's order: an existing file first, then a name
            info = path.stat()
            checkpoint = f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}"
        else:
            spec = lookup(str(source))
            checkpoint = spec.name if spec is not None else str(source)
        return ModelKey(checkpoint, str(resolve_device(device)), str(resolve_dtype(dtype)).replace("torch.", ""))

    def get(self, source: str, device: Any = None, dtype: Any = None) -> Any:
        """The model `load_model(source, device, dtype)` gives, loaded once and kept."""
        from .build import load_model

        key = self.key(source, device, dtype)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            model = load_model(source, device=device, dtype=dtype)
            self.loads += 1
            self._models[key] = model
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return model

    def keys(self) -> list[ModelKey]:
        """The models held, least recently used first."""
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)


#: the process's model cache (get_model's)
MODEL_CACHE = ModelCache()


def get_model(
    model: Any = None,
    device: Any = None,
    dtype: Any = None,
    checkpoint: Any = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """A loaded model, from MODEL_CACHE: `model` itself when it is already one (a samkit.Sam);
    else the model `model_source(model, checkpoint, environ)` names, on `device` (else
    $SAMKIT_DEVICE, else the best available) in `dtype` (else $SAMKIT_DTYPE, else float32)."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model
    source = model_source(model, checkpoint, environ)
    return MODEL_CACHE.get(source, device_setting(device, environ), dtype_setting(dtype, environ))
