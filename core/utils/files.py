"""Writing files so that nobody ever reads half of one."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError


def temporary_path(path: Path, suffix: str | None = None) -> Path:
    """A unique name beside `path` for writing it: `.{stem}.tmp-{pid}-{8 hex}{suffix}`, the suffix
    `path`'s own unless given ("" for a directory)."""
    ending = path.suffix if suffix is None else suffix
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ending}")


def temporary_owner(path: Path, name: str) -> tuple[int, str] | None:
    """For a file name made by temporary_path(path): the PID of the process that made it and
    what follows its hex part (the suffix, and anything a writer appended); else None."""
    prefix = f".{path.stem}.tmp-"
    if not name.startswith(prefix):
        return None
    match = re.fullmatch(r"(\d+)-[0-9a-f]{8}(.*)", name[len(prefix):], flags=re.DOTALL)
    return None if match is None else (int(match.group(1)), match.group(2))


@contextmanager
def atomic_output(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends
    normally, deleted when it raises. Readers see the old file, no file, or the whole new one,
    never a partial one, even if the process is killed mid-write.

    The temporary name keeps `path`'s extension (writers that pick a format by extension still
    work) and is unique per call (concurrent writers do not clash). durable=True also flushes
    the finished file to disk before the rename, so a power cut cannot leave it empty.
    """
    path = Path(path)
    _check_parent(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        # an error about the hidden temporary name would puzzle the user: name their path
        if not isinstance(exc, OutputError) and str(tmp) in (str(exc.filename), str(exc.filename2)):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"cannot write {path}: {parent} {what}")


def output_directory(path: str | os.PathLike, create: bool = True) -> Path:
    """The directory a command writes its files into, checked (and made, with create=True).

    samkit's one rule for outputs: the file or directory you name is created, the folders above
    it never are (a typo must not build a tree somewhere else), so its parent must exist. An
    existing file where the directory belongs is refused. Raises OutputError naming the fix."""
    path = Path(os.fspath(path)).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a directory: name a directory for the outputs "
                          "(it is created if missing)")
    if not path.is_dir():
        parent = path.parent
        if not parent.is_dir():
            raise OutputError(f"cannot create the output directory {path}: {parent} does not exist "
                              "(samkit creates only the last folder of an output path; create the others first)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot create the output directory {path}: {parent} is not writable")
        if create:
            try:
                path.mkdir()
            except FileExistsError:  # made meanwhile by someone else: fine if it is a directory
                if not path.is_dir():
                    raise OutputError(f"{path} exists and is not a directory") from None
            except OSError as exc:
                raise OutputError(f"cannot create the output directory {path}: {exc.strerror or exc}") from exc
    elif not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {path}: the directory is not writable")
    return path


def check_new_directory(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse (FileExistsError, a one-line message) to write a folder over something that exists,
    unless `overwrite` and it is a folder; for callers that check before doing expensive work."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder; choose another output path")
        if not overwrite:
            raise FileExistsError(f"{path} already exists; choose another folder or pass overwrite (--overwrite)")
    _check_parent(path)  # the folders above an output are never created (output_directory's rule): OutputError


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside `path` to write a folder's files into; it becomes `path` when the
    block ends normally and is deleted when it raises. Readers never see a partly written folder.

    Its parent folder must exist (OutputError). An existing `path` is refused (FileExistsError)
    unless `overwrite`; then the old folder is
    renamed aside, the new one renamed into place and the old one deleted (between the two renames
    `path` is briefly absent: POSIX cannot swap two folders in one step).
    """
    import shutil

    path = Path(path)
    check_new_directory(path, overwrite)
    tmp = temporary_path(path, suffix="")
    tmp.mkdir()
    try:
        yield tmp
        check_new_directory(path, overwrite)  # something may have appeared meanwhile
        if path.exists():
            old = temporary_path(path, suffix=".old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old, path)  # put the old folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
