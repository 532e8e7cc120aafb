"""Checkpoint files a user brings: a truncated one is named as such in one sentence; one copied
by hand into the cache under an official name is checked against the official hash once, and
the check is remembered."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil

import pytest

import samkit
from samkit import build


def test_a_truncated_checkpoint_says_so_in_whole_sentences(tmp_path, mobile_sam_checkpoint):
    data = mobile_sam_checkpoint.read_bytes()
    path = tmp_path / "mobile_sam.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(samkit.CheckpointError) as info:
        samkit.load_model(path, device="cpu")
    message = str(info.value)
    assert message.startswith(f"cannot read checkpoint {path}: it is truncated ({len(data) // 2:,} bytes")
    assert message.endswith("or pass the complete file.") and "miniz" not in message and "\n" not in message


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMKIT_HOME", str(tmp_path))

    def unreachable(url, destination):  # nothing may be downloaded in these tests
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(build, "_download", unreachable)
    return tmp_path


def test_a_hand_copied_file_that_is_not_the_official_one_is_refused(cache, mobile_sam_checkpoint):
    # the seeded random weights under the official name: not the file whose hash MobileSAM publishes
    shutil.copy(mobile_sam_checkpoint, cache / "mobile_sam.pt")
    with pytest.raises(samkit.CheckpointError) as info:
        samkit.load_model("mobile_sam", device="cpu")
    message = str(info.value)
    assert message.startswith(f"{cache / 'mobile_sam.pt'} is not the official mobile_sam.pt: mobile_sam.pt has git "
                              f"blob SHA-1 {git_blob_sha1(mobile_sam_checkpoint.read_bytes())}")
    assert "samkit download mobile_sam" in message and "pass its path" in message
    assert (cache / "mobile_sam.pt").is_file()  # the user's file is left alone
    # by path it is the user's choice, and loads
    assert samkit.load_model(cache / "mobile_sam.pt", device="cpu").arch == "mobile_sam"


def test_a_hand_copied_official_file_is_hashed_once(cache, mobile_sam_checkpoint, monkeypatch):
    data = mobile_sam_checkpoint.read_bytes()
    spec = dataclasses.replace(build.CHECKPOINTS["mobile_sam"], git_blob_sha1=git_blob_sha1(data))
    monkeypatch.setitem(build.CHECKPOINTS, "mobile_sam", spec)  # as if these were the official bytes
    shutil.copy(mobile_sam_checkpoint, cache / "mobile_sam.pt")
    hashed = []
    digest = build._file_digest
    monkeypatch.setattr(build, "_file_digest", lambda path, hasher: hashed.append(path) or digest(path, hasher))

    assert samkit.load_model("mobile_sam", device="cpu").arch == "mobile_sam"
    assert hashed == [cache / "mobile_sam.pt"]
    samkit.load_model("mobile_sam", device="cpu")
    assert len(hashed) == 1, "a file that passed and did not change is not hashed again"
    # a file replaced since (another size or time) is checked again
    stat = os.stat(cache / "mobile_sam.pt")
    os.utime(cache / "mobile_sam.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    samkit.load_model("mobile_sam", device="cpu")
    assert len(hashed) == 2
