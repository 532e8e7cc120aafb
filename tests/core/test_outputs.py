"""Where outputs go: one rule for every command (the folder named is made, never the folders above
it), one-line errors that name the user's path (never a hidden temporary file)."""

from __future__ import annotations

import numpy as np
import pytest

import samkit
from samkit.cli import main
from samkit.errors import OutputError
from samkit.files import atomic_output, output_directory


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("samkit: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def predict_args(images_dir, checkpoint, out) -> list[str]:
    return ["predict", str(images_dir / "dog.jpg"), "--points", "300,250", "--model", str(checkpoint),
            "--device", "cpu", "-o", str(out)]


def test_predict_onto_an_existing_file_is_one_line(mobile_sam_checkpoint, images_dir, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main(predict_args(images_dir, mobile_sam_checkpoint, afile)) == 2
    err = one_line_error(capsys)
    assert f"{afile} exists and is not a directory" in err
    assert afile.read_text() == "keep me"


def test_a_missing_parent_folder_is_refused_before_any_work(mobile_sam_checkpoint, images_dir, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "out"
    # a model that cannot load would fail later: the output is checked first
    argv = predict_args(images_dir, tmp_path / "missing.pt", out)
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path / 'no' / 'such'} does not exist" in err and "create the others first" in err
    assert not (tmp_path / "no").exists()
    argv = ["everything", str(images_dir / "dog.jpg"), "--model", str(tmp_path / "missing.pt"), "-o", str(out)]
    assert main(argv) == 2 and "does not exist" in one_line_error(capsys)


def test_the_named_folder_itself_is_created(mobile_sam_checkpoint, images_dir, tmp_path, capsys):
    out = tmp_path / "new-out"
    assert main(predict_args(images_dir, mobile_sam_checkpoint, out)) == 0
    assert (out / "overlay.png").is_file() and (out / "masks.json").is_file()


def test_result_save_names_the_users_path(dog_predictor, tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    result = samkit.Result(image, np.zeros((1, 40, 60), bool), np.zeros((1, 4)), np.zeros(1))
    target = tmp_path / "missing" / "overlay.png"
    with pytest.raises(OutputError) as info:
        result.save(target)
    assert str(info.value) == f"cannot write {target}: {tmp_path / 'missing'} does not exist"
    assert isinstance(info.value, OSError) and isinstance(info.value, samkit.SamkitError)
    with pytest.raises(OutputError, match="does not exist"):
        result.save_masks(tmp_path / "missing" / "masks")
    assert result.save(tmp_path / "overlay.png") == str(tmp_path / "overlay.png")


def test_a_write_error_names_the_target_not_the_temporary(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(OutputError) as info:
        with atomic_output(target) as tmp:
            raise PermissionError(13, "Permission denied", str(tmp))
    assert str(info.value) == f"cannot write {target}: Permission denied" and ".tmp-" not in str(info.value)
    with pytest.raises(ValueError, match="unrelated"):  # the writer's own errors pass unchanged
        with atomic_output(target):
            raise ValueError("unrelated")


def test_output_directory_rule(tmp_path):
    assert output_directory(tmp_path / "a") == tmp_path / "a" and (tmp_path / "a").is_dir()
    assert output_directory(tmp_path / "a") == tmp_path / "a"  # an existing one is fine
    assert output_directory(tmp_path / "b", create=False) == tmp_path / "b" and not (tmp_path / "b").exists()
    with pytest.raises(OutputError, match="does not exist"):
        output_directory(tmp_path / "c" / "d")
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        output_directory(tmp_path / "f")
