"""Writing files so that nobody ever reads half of one."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
    tmp = temporary_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
