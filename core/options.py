"""Settings under one spelling for every front end: the core command line, the GIS tool, the Label
Studio backend and the FiftyOne plugin.

- `GeneratorOptions`: segment-everything's settings under the official generators' names, with
  their defaults. Front ends spell them as the official names (Python keywords, FiftyOne
  parameters), dashed on a command line (`--stability-score-thresh`) and upper case in an
  environment variable (`SAMKIT_LS_STABILITY_SCORE_THRESH`). None of them repeats a default.
- `add_generator_arguments` / `generator_arguments`: those settings as command-line flags.
- `deprecated`: the one message an old spelling gets while it keeps working.

Standard library only (adapters build their command lines from it without loading torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import warnings
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

log = logging.getLogger("samkit")


@dataclass(frozen=True)
class GeneratorOptions:
    """Segment-everything settings, under the official generators' names, with their defaults.

    A None value is the model family's official default (registry.Family.generator_defaults:
    pred_iou_thresh is 0.88 for SAM 1, 0.8 for SAM 2; mask_threshold is the model's own, 0.0);
    `resolved(model)` fills them in. The core command line, the GIS tool, the Label Studio backend
    and the FiftyOne plugin all take these names and defaults from here.

    SAM 2's generator adds: mask_threshold (the logit at which a mask is cut), use_m2m (decode
    each candidate once more with its own low-res logits as the mask prompt, single-mask, and
    keep that refined mask and its score: slower, sometimes cleaner) and multimask_output (three
    candidates per grid point, else one).
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float | None = None
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"
    # SAM2AutomaticMaskGenerator's additions (they apply to SAM 1 models as well)
    mask_threshold: float | None = None
    use_m2m: bool = False
    multimask_output: bool = True

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of one setting (None: the model family's, see `resolved`)."""
        return getattr(cls(), name)

    def replace(self, **changes: Any) -> GeneratorOptions:
        """A copy with some settings changed; an unknown name is a ValueError naming the known ones."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise ValueError(
                f"unknown segment-everything option(s) {', '.join(unknown)}; known: {', '.join(self.names())}"
            )
        return dataclasses.replace(self, **changes)

    def resolved(self, model: Any) -> GeneratorOptions:
        """These options with every None replaced by the model family's default."""
        from .registry import spec_of

        defaults = {"mask_threshold": model.mask_threshold, **SAM1_GENERATOR_DEFAULTS,
                    **spec_of(model).family.generator_defaults}
        filled = {name: defaults[name] for name in self.names() if getattr(self, name) is None and name in defaults}
        return dataclasses.replace(self, **filled)


# The official automatic mask generators' values for what GeneratorOptions leaves to the model
# family, by registry family name: segment-anything's SamAutomaticMaskGenerator ("sam") and sam2's
# SAM2AutomaticMaskGenerator ("sam2"). They live here, where no torch is imported, so that a
# command's --help can show them; registry.Family.generator_defaults refers to these.
FAMILY_GENERATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "sam": {"pred_iou_thresh": 0.88},
    "sam2": {"pred_iou_thresh": 0.8},
}
FAMILY_LABELS = {"sam": "SAM 1 and MobileSAM", "sam2": "SAM 2 / 2.1"}
SAM1_GENERATOR_DEFAULTS = FAMILY_GENERATOR_DEFAULTS["sam"]


# -- old spellings ---------------------------------------------------------------------------------

class SamkitDeprecationWarning(DeprecationWarning):
    """An old spelling of a setting was used; it still works, under its new name."""


def deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """Say once, where it was used, that `old` is spelled `new` now: a SamkitDeprecationWarning
    (for code and tests) and a warning log line (what a user of a command or a server sees:
    Python hides DeprecationWarnings outside __main__)."""
    message = f"{old} is deprecated: use {new}"
    warnings.warn(message, SamkitDeprecationWarning, stacklevel=stacklevel)
    log.warning("samkit: %s", message)


# -- command-line flags ----------------------------------------------------------------------------

# The least value a whole-number setting takes (a grid of 0 points has nothing to prompt with).
_MINIMUM = {"points_per_side": 1, "points_per_batch": 1, "crop_n_layers": 0, "crop_n_points_downscale_factor": 1,
            "min_mask_region_area": 0}
_HELP = {
    "points_per_side": "grid of point prompts per image side",
    "points_per_batch": "point prompts decoded at once (memory against speed)",
    "pred_iou_thresh": "keep masks whose predicted IoU is above this",
    "stability_score_thresh": "keep masks whose stability score is at least this",
    "stability_score_offset": "logit offset of the stability score",
    "box_nms_thresh": "box IoU above which the lower-scoring of two masks is dropped",
    "crop_n_layers": "also segment 4^k zoomed crops in layer k (small objects; slower)",
    "crop_nms_thresh": "box IoU for dropping duplicates between crops",
    "crop_overlap_ratio": "overlap of neighbouring crops, as a fraction of the crop",
    "crop_n_points_downscale_factor": "points per side divided by this in each crop layer",
    "min_mask_region_area": "fill holes and remove islands smaller than this many pixels",
    "mask_threshold": "mask logit threshold",
    "use_m2m": "refine each candidate once with its own mask as the mask prompt (SAM 2's use_m2m; slower)",
    "multimask_output": "three candidate masks per grid point (--no-multimask-output: one)",
}


def family_defaults(name: str) -> str:
    """How a setting left to the model family is described in help texts: "the model's: 0.88 for
    SAM 1 and MobileSAM, 0.8 for SAM 2 / 2.1"."""
    values = [f"{defaults[name]:g} for {FAMILY_LABELS[family]}"
              for family, defaults in FAMILY_GENERATOR_DEFAULTS.items() if name in defaults]
    return "the model's: " + ", ".join(values) if values else "the model's"


def flag(name: str) -> str:
    """The command-line spelling of a setting: pred_iou_thresh -> --pred-iou-thresh."""
    return "--" + name.replace("_", "-")


def whole_number(least: int = 0):
    """An argparse type: a whole number of at least `least` ("must be at least 1, got 0")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


class _DeprecatedFlag(argparse.Action):
    """An old flag: stores into the new setting and says that it is deprecated."""

    def __init__(self, option_strings, dest, new_flag: str = "", **kwargs) -> None:
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        deprecated(option_string, self.new_flag)
        setattr(namespace, self.dest, values)


def add_generator_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str],
    old_flags: Mapping[str, str] | None = None,
) -> None:
    """Add `--points-per-side` and the like for these GeneratorOptions names, each defaulting to
    None (GeneratorOptions' default, or the model family's: `generator_arguments` leaves it out).
    `old_flags` maps an old flag (e.g. "--stability-thresh") to the setting it still sets, with a
    deprecation message; it is not listed in --help."""
    types = {f.name: f.type for f in fields(GeneratorOptions)}
    for name in names:
        default = GeneratorOptions.default(name)
        if "bool" in str(types[name]):  # --use-m2m / --no-use-m2m
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{_HELP.get(name, name)} (default: {'on' if default else 'off'})")
            continue
        shown = family_defaults(name) if default is None else f"{default:g}" if isinstance(default, float) else default
        whole = "int" in str(types[name])
        kind = whole_number(_MINIMUM.get(name, 0)) if whole else _number
        parser.add_argument(flag(name), dest=name, type=kind, default=None, metavar="N" if whole else "X",
                            help=f"{_HELP.get(name, name)} (default: {shown})")
    for old, name in (old_flags or {}).items():
        kind = whole_number(_MINIMUM.get(name, 0)) if "int" in str(types[name]) else _number
        parser.add_argument(old, dest=name, type=kind, default=None, action=_DeprecatedFlag, new_flag=flag(name),
                            help=argparse.SUPPRESS)


def generator_arguments(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The settings given on the command line (those left out take their defaults downstream)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
