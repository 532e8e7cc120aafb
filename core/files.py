"""Writing files so that nobody ever reads half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
