"""An operator run whose model cannot be found (a wrong path; a model name not downloaded yet,
with no network) fails before it starts, in one line naming the fix, not with the run's traceback."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import fiftyone.operators as foo
from fiftyone.operators.executor import ExecutionError

import samkit.build

REPO = Path(__file__).resolve().parents[2]
PROMPTS = "@samkit/fiftyone/segment_prompts"
EVERYTHING = "@samkit/fiftyone/segment_everything"


def one_line_execution_error(operator: str, dataset, params: dict) -> str:
    with pytest.raises(ExecutionError) as info:
        foo.execute_operator(operator, ctx={"dataset": dataset, "params": params})
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def test_an_operator_with_a_missing_checkpoint_fails_in_one_line(make_dataset, photos, tmp_path):
    dataset = make_dataset([photos["dog.jpg"]], boxes=True)
    missing = tmp_path / "mobile_sam.pt"
    message = one_line_execution_error(PROMPTS, dataset, {"prompt_field": "gt", "model": str(missing)})
    assert message.startswith("Validation error. Path: model. Reason: no checkpoint file at")
    assert str(missing) in message
    assert "gt_sam" not in dataset.get_field_schema()  # nothing ran


def test_a_model_name_that_cannot_be_downloaded_fails_in_one_line(make_dataset, photos, tmp_path, monkeypatch):
    """Offline, the default model (mobile_sam, not in the cache) cannot be downloaded: the run is
    refused before it starts, naming where to put the file."""
    dataset = make_dataset([photos["dog.jpg"]])
    monkeypatch.setenv("SAMKIT_HOME", str(tmp_path / "cache"))
    spec = samkit.build.CHECKPOINTS["mobile_sam"]
    # port 9 (discard) on this machine refuses connections: a download server that cannot be reached
    monkeypatch.setitem(samkit.build.CHECKPOINTS, "mobile_sam",
                        dataclasses.replace(spec, url="http://127.0.0.1:9/weights/mobile_sam.pt"))
    message = one_line_execution_error(EVERYTHING, dataset, {"output_field": "sam"})
    assert re.search(r"Reason: mobile_sam\.pt is not in .*cache and 127\.0\.0\.1:9 cannot be reached", message)
    assert f"put it at {tmp_path / 'cache' / 'mobile_sam.pt'}" in message


def test_the_readme_snippet_names_a_model():
    readme = (REPO / "README.md").read_text()
    snippet = readme[readme.index("foo.execute_operator("):]
    snippet = snippet[: snippet.index("```")]
    assert snippet.count("execute_operator(") == snippet.count('"model":'), snippet
