"""Which segmenter runs on each tile: a user object, or a MaskGenerator built lazily per process."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .errors import GeoError

#: MaskGenerator defaults for geospatial tiles (documented in README, overridable)
DEFAULT_GENERATOR_OPTIONS = {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95}


@dataclass(frozen=True)
class GeneratorSpec:
    """A ``samkit.MaskGenerator`` on ``model``, described so that it can be sent to Dask workers
    and built once in each process (loading the checkpoint once per worker, not per tile)."""

    model: str = "mobile_sam"
    device: str | None = None
    options: tuple = field(default_factory=tuple)  # sorted (key, value) pairs

    @classmethod
    def create(cls, model="mobile_sam", device=None, **options):
        opts = dict(DEFAULT_GENERATOR_OPTIONS)
        opts.update({k: v for k, v in options.items() if v is not None})
        return cls(str(model), device, tuple(sorted(opts.items())))

    def build(self):
        try:
            from samkit import MaskGenerator, load_model
        except ImportError as exc:  # pragma: no cover - core missing
            raise GeoError(f"samkit's core is not importable ({exc}); reinstall samkit") from exc
        model = load_model(self.model, device=self.device)
        return MaskGenerator(model, **dict(self.options))


def resolve(generator):
    """The object whose ``generate`` to call: specs are built once per process and cached."""
    if isinstance(generator, GeneratorSpec):
        from samkit.utils.cluster import built_once

        return built_once(generator, generator.build)
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
