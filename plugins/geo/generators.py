"""Which segmenter runs on each tile: a user object, or a MaskGenerator on a model loaded once per process."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .errors import GeoError


@dataclass(frozen=True)
class GeneratorSpec:
    """A ``samkit.MaskGenerator`` on ``model``, described so that it can be sent to Dask workers
    and built in each process on the process's model cache (``samkit.get_model``: the checkpoint
    is loaded once per worker, not per tile)."""

    model: str = "mobile_sam"
    device: str | None = None
    options: tuple = field(default_factory=tuple)  # sorted (key, value) pairs: samkit.GeneratorOptions names
    dtype: str | None = None

    @classmethod
    def create(cls, model=None, device=None, dtype=None, **options):
        """``model`` None: $SAMKIT_CHECKPOINT, else $SAMKIT_MODEL, else mobile_sam; ``dtype`` None:
        $SAMKIT_DTYPE, else float32 (both decided here, so every worker runs the same model);
        ``options`` left out or None take samkit.GeneratorOptions' defaults."""
        from samkit.models import dtype_setting, model_source
        from samkit.options import GeneratorOptions

        opts = {k: v for k, v in options.items() if v is not None}
        try:
            GeneratorOptions().replace(**opts)
        except ValueError as exc:
            raise GeoError(str(exc)) from None
        dtype = dtype_setting(dtype)
        return cls(model_source(model), device, tuple(sorted(opts.items())), None if dtype is None else str(dtype))

    def build(self):
        try:
            from samkit import MaskGenerator, get_model
        except ImportError as exc:  # pragma: no cover - core missing
            raise GeoError(f"samkit's core is not importable ({exc}); reinstall samkit") from exc
        return MaskGenerator(get_model(self.model, device=self.device, dtype=self.dtype), **dict(self.options))


def resolve(generator):
    """The object whose ``generate`` to call: a spec is built on the process's loaded model."""
    if isinstance(generator, GeneratorSpec):
        return generator.build()
    if not callable(getattr(generator, "generate", None)):
        raise GeoError(
            f"generator must have a generate(image) -> list of records method (like samkit.MaskGenerator);"
            f" got {type(generator).__name__}"
        )
    return generator


def fingerprint(generator) -> str:
    """A stable description of the segmenter, so checkpoints made by another one are not reused.

    An object may define ``fingerprint`` (attribute or method) to say precisely what it is;
    otherwise its class and its simple attributes (numbers, strings, tuples) are used.
    """
    if isinstance(generator, GeneratorSpec):
        desc = {"spec": [generator.model, list(map(list, generator.options))]}
        if generator.dtype is not None:  # (absent from float32 runs, so their checkpoints stay valid)
            desc["dtype"] = generator.dtype
    else:
        fp = getattr(generator, "fingerprint", None)
        if callable(fp):
            fp = fp()
        if fp is not None:
            desc = {"fingerprint": str(fp)}
        else:
            attrs = {}
            for k, v in sorted(getattr(generator, "__dict__", {}).items()):
                if isinstance(v, (int, float, str, bool, type(None))) or (
                    isinstance(v, (tuple, list)) and all(isinstance(x, (int, float, str, bool)) for x in v)
                ):
                    attrs[k] = v
            model = getattr(generator, "model", None) or getattr(getattr(generator, "predictor", None), "model", None)
            if model is not None:
                attrs["model.arch"] = str(getattr(model, "arch", type(model).__name__))
            cls = type(generator)
            desc = {"class": f"{cls.__module__}.{cls.__qualname__}", "attrs": attrs}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]
