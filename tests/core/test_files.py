"""Outputs are written whole or not at all."""

from __future__ import annotations

import numpy as np
import pytest

from samkit.utils.files import atomic_output
from samkit.utils.visualize import save_png


def test_atomic_output_replaces_only_on_success(tmp_path):
    target = tmp_path / "masks.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.json"]  # no temporary left behind

    with atomic_output(target, durable=True) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible before the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.json"]


def test_failed_png_write_leaves_no_file(tmp_path):
    target = tmp_path / "overlay.png"
    with pytest.raises(Exception):
        save_png(target, np.zeros((4, 4, 7), dtype=np.uint8))  # 7 channels: PIL refuses
    assert not list(tmp_path.iterdir())
    save_png(target, np.zeros((4, 4, 3), dtype=np.uint8))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_atomic_directory(tmp_path):
    from samkit.utils.files import atomic_directory

    target = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.onnx").write_text("half")
            raise RuntimeError("killed mid-write")
    assert not list(tmp_path.iterdir())  # neither the folder nor the temporary one

    with atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and not target.exists()
        (tmp / "a.onnx").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and (target / "a.onnx").read_text() == "new"

    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_directory(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "b.onnx").write_text("half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in target.iterdir()) == ["a.onnx"]  # the old folder untouched
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "b.onnx").write_text("replacement")
    assert sorted(p.name for p in target.iterdir()) == ["b.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        with atomic_directory(tmp_path / "file", overwrite=True):
            pass
