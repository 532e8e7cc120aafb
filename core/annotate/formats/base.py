"""What every output format shares: the writer interface, the run manifest (which settings
made the outputs in a folder) and the per-image journal that one-file formats (COCO, Label
Studio) are assembled from.

Why a journal: a COCO or Label Studio file holds every image, but a run over 100,000 images must
not hold every mask. Each image's encoded objects go to `<output>/.samkit-annotate/<format>.jsonl`
as soon as it is done (one JSON line, flushed); the file users read is assembled from it at the
end, streaming, into a temporary file renamed into place. An interrupted run leaves the journal,
and a re-run with skip_existing continues from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ...utils.files import atomic_output
from ..records import AnnotateError, ImageInfo, ImageResult, ObjectMask, ShapeOptions

WORK_DIR = ".samkit-annotate"
MANIFEST = "manifest.json"


@dataclass
class RunInfo:
    """What a writer is told when a run starts: the data folder, the run's fingerprint (detector,
    model, options), whether to skip images already done, and the class names known so far."""

    root: Path
    fingerprint: dict[str, Any]
    skip_existing: bool
    names: dict[int, str] = field(default_factory=dict)


#: encode(image, objects, names) -> the format's payload for one image (runs where SAM runs:
#: a Dask worker, or this process); must be picklable.
Encoder = Callable[[ImageInfo, "list[ObjectMask]", "dict[int, str]"], Any]


class Writer:
    """An output format. Subclasses set `name`, `mask_formats` (the first is the default) and
    implement encoder(), write() and finish(). Use:

        writer.start(run) -> keys already done (skip_existing), else empty
        writer.write(result) per image (in this process)
        writer.finish(names) -> output paths;  writer.close() when interrupted
    """

    name = "format"
    mask_formats: tuple[str, ...] = ("polygons",)

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.output_dir = Path(output_dir)

    def encoder(self, shape: ShapeOptions) -> Encoder:
        raise NotImplementedError

    def start(self, run: RunInfo) -> set[str]:
        self.run = run
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / WORK_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise AnnotateError(f"cannot create the output folder {self.output_dir}: {exc.strerror}") from None
        check_manifest(self.output_dir, self.name, run)
        return set()

    def done_key(self, info: ImageInfo) -> str:
        """The key start() reports an image as done by."""
        return info.key

    def write(self, result: ImageResult) -> None:
        raise NotImplementedError

    def finish(self, names: dict[int, str]) -> list[Path]:
        return []

    def describe(self) -> str:
        """Where the outputs are, for the summary line (after finish)."""
        outputs = getattr(self, "outputs", None) or [self.output_dir]
        return ", ".join(str(p) for p in outputs)

    def close(self) -> None:
        """The run stopped early: release files; outputs stay as they are for a resume."""

    def fingerprint(self) -> dict[str, Any]:
        """Options of this format that change what it writes (compared when a run resumes)."""
        return {}


def check_manifest(output_dir: Path, name: str, run: RunInfo) -> None:
    """With skip_existing, outputs made with other settings are not mixed with new ones: refuse
    (one line naming what differs). Then record this run's settings."""
    path = output_dir / WORK_DIR / MANIFEST
    wanted = json.loads(json.dumps({"format": name, **run.fingerprint}, default=str))
    if run.skip_existing and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old != wanted:
            differ = sorted(k for k in set(old) | set(wanted) if old.get(k) != wanted.get(k))
            raise AnnotateError(
                f"{output_dir} holds outputs of a run with other settings ({', '.join(differ)} differ); "
                "skip_existing would mix them: run without skip_existing to overwrite, or choose another output folder"
            )
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(wanted, indent=1, sort_keys=True), encoding="utf-8")


class Journal:
    """One JSON line per image ({"key": ..., ...}), appended and flushed as images finish; the
    latest line of a key wins. A line cut short by a crash is dropped when the journal is opened."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.offsets: dict[str, int] = {}
        if fresh or not path.exists():
            path.write_bytes(b"")
        else:
            good = 0
            with open(path, "rb") as handle:
                for line in handle:
                    if not line.endswith(b"\n"):
                        break
                    try:
                        key = json.loads(line)["key"]
                    except (ValueError, KeyError, TypeError):
                        break
                    self.offsets[key] = good
                    good += len(line)
            if good != path.stat().st_size:
                with open(path, "rb+") as handle:
                    handle.truncate(good)
        self._handle = open(path, "ab")

    def done(self) -> set[str]:
        return set(self.offsets)

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        offset = self._handle.tell()
        self._handle.write(line)
        self._handle.flush()
        self.offsets[record["key"]] = offset

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def records(self) -> Iterator[dict[str, Any]]:
        """The latest record of every key, in key order (read one at a time)."""
        if not self._handle.closed:
            self._handle.flush()
        with open(self.path, "rb") as handle:
            for key in sorted(self.offsets):
                handle.seek(self.offsets[key])
                yield json.loads(handle.readline())


class JournalWriter(Writer):
    """A format written as one file assembled from the journal (COCO, Label Studio)."""

    def start(self, run: RunInfo) -> set[str]:
        super().start(run)
        self.journal = Journal(self.output_dir / WORK_DIR / f"{self.name}.jsonl", fresh=not run.skip_existing)
        return self.journal.done() if run.skip_existing else set()

    def write(self, result: ImageResult) -> None:
        info = result.image
        self.journal.append({"key": info.key, "width": info.width, "height": info.height,
                             "objects": result.payload})

    def close(self) -> None:
        journal = getattr(self, "journal", None)
        if journal is not None:
            journal.close()


def json_items(handle, items: Iterator[Any], indent: str = "") -> int:
    """Write `items` as the elements of a JSON array (the brackets are the caller's), one per
    line; returns how many."""
    count = 0
    for item in items:
        handle.write(("," if count else "") + "\n" + indent + json.dumps(item, separators=(",", ":")))
        count += 1
    if count:
        handle.write("\n")
    return count
