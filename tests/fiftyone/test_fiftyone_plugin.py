"""The plugin as FiftyOne sees it: discovery, the module-name clash, forms, `samkit fiftyone install`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

import fiftyone as fo
import fiftyone.core.labels as fol
import fiftyone.operators as foo
import fiftyone.plugins as fop
from fiftyone.operators.executor import ExecutionContext
from fiftyone.plugins.context import PluginContext

from fo_checks import PLUGINS_DIR

PLUGIN_DIR = PLUGINS_DIR / "fiftyone"
URIS = {"@samkit/fiftyone/segment_everything", "@samkit/fiftyone/segment_prompts", "@samkit/fiftyone/segment_text",
        "@samkit/fiftyone/finetune"}


def test_fiftyone_yml_lists_every_operator():
    from samkit.fiftyone.operators import OPERATORS

    meta = yaml.safe_load((PLUGIN_DIR / "fiftyone.yml").read_text())
    assert meta["name"] == "@samkit/fiftyone"
    names = {cls().name for cls in OPERATORS}
    assert set(meta["operators"]) == names == {"segment_everything", "segment_prompts", "segment_text", "finetune"}
    assert {"SAMKIT_CHECKPOINT", "SAMKIT_DEVICE", "SAMKIT_MASK_DIR"} <= set(meta["secrets"])


def test_fiftyone_finds_the_plugin_and_keeps_its_own_module():
    """FIFTYONE_PLUGINS_DIR=<repo>/plugins makes FiftyOne load plugins/fiftyone/__init__.py as a
    module named "fiftyone"; the plugin must register and leave `import fiftyone` working."""
    assert fo.config.plugins_dir == str(PLUGINS_DIR)
    assert "@samkit/fiftyone" in [p.name for p in fop.list_plugins()]
    uris = {op.uri for op in foo.list_operators()}
    assert URIS <= uris
    import fiftyone

    assert sys.modules["fiftyone"] is fo and fiftyone is fo and hasattr(fiftyone, "Dataset")
    dataset = fo.Dataset()  # FiftyOne still works after the plugin module was executed
    dataset.delete()


def _ctx(dataset, params, **extra):
    return ExecutionContext(request_params={"dataset_name": dataset.name, "params": params, **extra})


def test_finetune_form(make_dataset, photos):
    dataset = make_dataset([photos["dog.jpg"]], boxes=True)
    op = foo.get_operator("@samkit/fiftyone/finetune")
    props = op.resolve_input(_ctx(dataset, {"label_field": "gt"})).type.properties
    for name in ("view_target", "label_field", "output", "model", "epochs", "lr", "batch_size", "val_fraction",
                 "classes", "train_prompt_encoder", "seed", "overwrite"):
        assert name in props, name
    assert props["output"].default.endswith(f"samkit_models/{dataset.name}-gt.pt")
    assert props["lr"].default == 1e-4 and props["epochs"].default == 10
    assert op.config.allow_delegated_execution and op.config.label == "SAM: fine-tune on a label field"


def test_segment_everything_form(make_dataset, photos):
    dataset = make_dataset([photos["dog.jpg"]], boxes=True)
    op = foo.get_operator("@samkit/fiftyone/segment_everything")
    props = op.resolve_input(_ctx(dataset, {})).type.properties
    for name in ("view_target", "output_field", "model", "points_per_side", "points_per_batch",
                 "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_n_layers",
                 "min_mask_region_area", "max_masks", "skip_existing", "mask_storage", "mask_dir"):
        assert name in props, name
    assert props["points_per_side"].default == 32 and props["skip_existing"].default is True
    assert not props["output_field"].invalid
    assert op.config.allow_delegated_execution and op.config.allow_immediate_execution

    # an output field that exists with another type is flagged in the form
    props = op.resolve_input(_ctx(dataset, {"output_field": "filepath"})).type.properties
    assert props["output_field"].invalid
    assert props["output_field"].error_message.startswith("field 'filepath' already exists and holds StringField")


def test_segment_prompts_form(make_dataset, photos):
    dataset = make_dataset([photos["dog.jpg"]], boxes=True)
    dataset.add_sample_field("kp", fo.EmbeddedDocumentField, embedded_doc_type=fol.Keypoints)
    dataset.add_sample_field("cls", fo.EmbeddedDocumentField, embedded_doc_type=fol.Classification)
    op = foo.get_operator("@samkit/fiftyone/segment_prompts")

    props = op.resolve_input(_ctx(dataset, {})).type.properties
    choices = [c.value for c in props["prompt_field"].view.choices]
    assert choices == ["gt", "kp"]  # only Detections and Keypoints fields are offered

    props = op.resolve_input(_ctx(dataset, {"prompt_field": "gt"})).type.properties
    assert "in_place" in props and "output_field" in props and props["output_field"].default == "gt_sam"
    props = op.resolve_input(_ctx(dataset, {"prompt_field": "gt", "in_place": True})).type.properties
    assert "output_field" not in props

    props = op.resolve_input(_ctx(dataset, {"prompt_field": "kp"})).type.properties
    assert "in_place" not in props and "point_labels_attr" in props

    props = op.resolve_input(_ctx(dataset, {"prompt_field": "cls"})).type.properties
    assert props["prompt_field"].invalid
    assert "Classification" in props["prompt_field"].error_message


def _run_cli(argv):
    from samkit.cli import main  # the `samkit` console script

    return main(argv)


def _operators_in(plugins_dir: Path):
    """What FiftyOne registers from `plugins_dir` (the plugin executed as FiftyOne does it)."""
    old = fo.config.plugins_dir
    fo.config.plugins_dir = str(plugins_dir)
    try:
        plugins = [p for p in fop.list_plugins() if p.name == "@samkit/fiftyone"]
        assert len(plugins) == 1
        pctx = PluginContext(plugins[0])
        pctx.register_all()
        assert not pctx.errors, pctx.errors
        return plugins[0].directory, {op.uri for op in pctx.instances}
    finally:
        fo.config.plugins_dir = old


@pytest.mark.parametrize("mode", ["link", "copy"])
def test_cli_install_into_plugins_dir(tmp_path, mode, capsys):
    plugins_dir = tmp_path / "plugins"
    argv = ["fiftyone", "install", "--plugins-dir", str(plugins_dir)] + (["--copy"] if mode == "copy" else [])
    assert _run_cli(argv) == 0
    target = plugins_dir / "@samkit" / "fiftyone"
    if mode == "link":
        assert target.is_symlink() and target.resolve() == PLUGIN_DIR.resolve()
    else:
        assert not target.is_symlink() and sorted(p.name for p in target.iterdir()) == ["__init__.py", "fiftyone.yml"]
    directory, uris = _operators_in(plugins_dir)
    assert Path(directory) == target
    assert uris == URIS

    again = ["fiftyone", "install", "--plugins-dir", str(plugins_dir)] + (["--copy"] if mode == "link" else [])
    assert _run_cli(again) == 2
    err = capsys.readouterr().err
    assert "samkit: error:" in err and "already exists; pass --force to replace it" in err
    assert _run_cli(again + ["--force"]) == 0
    assert _run_cli(["fiftyone", "uninstall", "--plugins-dir", str(plugins_dir)]) == 0
    assert not (plugins_dir / "@samkit").exists()


def test_enrich_example_runs(tmp_path, photos, checkpoint, monkeypatch, capsys):
    import runpy

    images = tmp_path / "images"
    images.mkdir()
    (images / "dog.jpg").write_bytes(Path(photos["dog.jpg"]).read_bytes())
    name = f"enrich-{tmp_path.name}"
    script = PLUGINS_DIR.parent / "examples" / "fiftyone_enrich.py"
    monkeypatch.setattr(sys, "argv", [
        str(script), "--images", str(images), "--dataset", name, "--model", checkpoint, "--points-per-side", "2",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--no-app"])
    try:
        runpy.run_path(str(script), run_name="__main__")
        out = capsys.readouterr().out
        assert "segment_everything: 1 samples written to 'sam_everything'" in out
        assert "segment_prompts: 1 samples written to 'boxes_sam'" in out
        dataset = fo.load_dataset(name)
        assert dataset.count("boxes_sam.detections") == dataset.count("boxes.detections") > 0
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
