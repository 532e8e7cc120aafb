"""The core's layout contracts (issue 18): the core imports no adapter, adapters register their own
commands, every model name resolves through one registry, old utility paths still import, and an
image state cached in an older format is recomputed, never misread."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import samkit
from samkit import registry
from samkit.build import MODEL_ALIASES, infer_arch
from samkit.image_state import STATE_FORMAT, ImageState

CORE = Path(samkit.__file__).resolve().parent
ADAPTERS = ("samkit.geo", "samkit.label_studio", "samkit.fiftyone")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(ADAPTERS):
            found.add(node.value)  # importlib.import_module("samkit.geo...")
    return found


def test_core_imports_no_adapter():
    offenders = {
        f"{path.relative_to(CORE)}: {name}"
        for path in CORE.rglob("*.py")
        for name in _imported_modules(path)
        if name.startswith(ADAPTERS)
    }
    assert not offenders, f"core modules import adapters: {sorted(offenders)}"


def test_adapter_commands_come_from_entry_points():
    from samkit.cli import build_parser, registered_commands

    modules = {add.__module__ for add in registered_commands()}
    # samkit.finetune's and samkit.export's commands are core's, registered the same way
    assert modules == {f"{adapter}.cli" for adapter in ADAPTERS} | {"samkit.finetune.cli", "samkit.export.cli"}
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"geo", "label-studio", "fiftyone", "finetune", "export", "annotate", "info", "predict",
            "everything"} <= set(commands)


def test_every_name_resolves_through_the_registry():
    for name, spec in registry.MODELS.items():
        assert registry.lookup(name) is spec
        assert registry.lookup(spec.checkpoint.filename) is spec, "the official file name is a name too"
        for alias in spec.aliases:
            assert registry.lookup(alias.upper()) is spec
            assert MODEL_ALIASES[alias.lower()] == name
        assert samkit.CHECKPOINTS[name] is spec.checkpoint
    for ultralytics_name, name in (("sam_b.pt", "vit_b"), ("sam_l.pt", "vit_l"), ("sam_h.pt", "vit_h"),
                                   ("mobile_sam.pt", "mobile_sam")):
        assert registry.lookup(ultralytics_name).name == name
    assert registry.lookup("sam_vit_q") is None


@pytest.mark.parametrize("width,name", [(768, "vit_b"), (1024, "vit_l"), (1280, "vit_h")])
def test_sam1_state_dicts_are_recognised_by_shape(width, name):
    keys = {"image_encoder.pos_embed": torch.zeros(1, 64, 64, width), "mask_decoder.iou_token.weight": torch.zeros(1)}
    assert infer_arch(keys, Path("x.pth")) == name


def test_unknown_state_dict_names_what_samkit_loads():
    with pytest.raises(samkit.CheckpointError, match="no model family samkit knows recognises") as info:
        infer_arch({"backbone.weight": torch.zeros(1)}, Path("x.pth"))
    assert "sam_vit_b_01ec64.pth" in str(info.value) and "mobile_sam.pt" in str(info.value)
    with pytest.raises(samkit.CheckpointError, match="width 512"):
        infer_arch({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 512),
                    "mask_decoder.iou_token.weight": torch.zeros(1)}, Path("x.pth"))


def test_generator_defaults_come_from_the_family(mobile_sam_checkpoint):
    model = samkit.load_model(mobile_sam_checkpoint, device="cpu")
    assert samkit.GeneratorOptions().pred_iou_thresh is None
    assert samkit.GeneratorOptions().resolved(model).pred_iou_thresh == 0.88
    generator = samkit.MaskGenerator(model, points_per_side=4, pred_iou_thresh=0.5)
    assert generator.options.pred_iou_thresh == 0.5 == generator.pred_iou_thresh
    with pytest.raises(ValueError, match="unknown segment-everything option"):
        samkit.GeneratorOptions().replace(stability_thresh=0.9)


def test_old_utility_module_paths_are_the_same_modules():
    script = (
        "import samkit.mask_utils, samkit.utils.mask_utils, samkit.transforms, samkit.utils.transforms\n"
        "from samkit.prefetch import prefetch\n"
        "from samkit import mask_utils\n"
        "import samkit.utils.prefetch as p\n"
        "assert samkit.mask_utils is samkit.utils.mask_utils is mask_utils\n"
        "assert samkit.transforms is samkit.utils.transforms and prefetch is p.prefetch\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_cache_file_of_an_older_format_is_recomputed(tmp_path, mobile_sam_checkpoint):
    model = samkit.load_model(mobile_sam_checkpoint, device="cpu")
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:30, 20:40] = 200
    predictor = samkit.Predictor(model, cache_dir=tmp_path)
    key = predictor.image_key(image)
    # what a cache file looked like before ImageState had a format (a different embedding)
    stale = {"features": torch.ones(1, 256, 64, 64), "original_size": [40, 60], "input_size": [683, 1024]}
    torch.save(stale, tmp_path / f"{key}.pt")
    predictor.set_image(image)
    assert predictor.encoder_calls == 1, "an old-format cache file must be recomputed"
    assert not torch.equal(predictor.get_image_embedding(), stale["features"])
    saved = torch.load(tmp_path / f"{key}.pt", weights_only=True)
    assert saved["format"] == STATE_FORMAT
    state = ImageState.from_file(saved)
    assert state.original_size == (40, 60) and state.high_res_features == ()
    fresh = samkit.Predictor(model, cache_dir=tmp_path)
    fresh.set_image(image)
    assert fresh.encoder_calls == 0, "a file of the current format is read back"
    assert torch.equal(fresh.get_image_embedding(), predictor.get_image_embedding())
