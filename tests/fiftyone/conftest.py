"""FiftyOne test harness: a private MongoDB, config and plugin path for this test session.

FiftyOne reads its environment when it is imported, so this module sets it first and then
imports fiftyone (HOME pointed at a temporary folder just for that import: FiftyOne derives
~/.fiftyone paths from it; other suites keep the real HOME). The database is the MongoDB 6.0.5
that tests/setup/fiftyone.sh installs, in a temporary folder; subprocesses (delegated workers,
the App server) get the same environment from ``fiftyone_env()``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from fo_checks import BOXES, PLUGINS_DIR

if "fiftyone" in sys.modules:  # its config would already point at the user's database
    raise RuntimeError("fiftyone was imported before tests/fiftyone/conftest.py could isolate it")

_ROOT = Path(tempfile.mkdtemp(prefix="samkit-fiftyone-"))
FIFTYONE_HOME = _ROOT / "home"
FIFTYONE_HOME.mkdir()
FIFTYONE_ENV = {
    "FIFTYONE_DATABASE_DIR": str(_ROOT / "db"),
    "FIFTYONE_DO_NOT_TRACK": "true",
    "FIFTYONE_DATABASE_VALIDATION": "false",
    "FIFTYONE_PLUGINS_DIR": str(PLUGINS_DIR),
    "FIFTYONE_PLUGINS_CACHE_ENABLED": "false",
    "FIFTYONE_CONFIG_PATH": str(_ROOT / "config.json"),
    "FIFTYONE_APP_CONFIG_PATH": str(_ROOT / "app_config.json"),
    "FIFTYONE_ANNOTATION_CONFIG_PATH": str(_ROOT / "annotation_config.json"),
    "FIFTYONE_EVALUATION_CONFIG_PATH": str(_ROOT / "evaluation_config.json"),
    "FIFTYONE_DEFAULT_DATASET_DIR": str(_ROOT / "fiftyone"),
    "FIFTYONE_SHOW_PROGRESS_BARS": "false",
}
for _name in ("FIFTYONE_DATABASE_URI", "FIFTYONE_DATABASE_NAME", "SAMKIT_CHECKPOINT", "SAMKIT_MODEL", "SAMKIT_DEVICE",
              "SAMKIT_DTYPE", "SAMKIT_MASK_DIR"):
    os.environ.pop(_name, None)
os.environ.update(FIFTYONE_ENV)

_real_home = os.environ.get("HOME")
os.environ["HOME"] = str(FIFTYONE_HOME)
try:
    import fiftyone as fo  # noqa: E402
    import fiftyone.core.labels as fol  # noqa: E402,F401
finally:
    if _real_home is None:
        os.environ.pop("HOME", None)
    else:
        os.environ["HOME"] = _real_home


def _cleanup() -> None:
    try:
        from fiftyone.core.odm import database

        service = getattr(database, "_db_service", None)
        if service is not None:
            service.stop()
    except Exception:
        pass
    shutil.rmtree(_ROOT, ignore_errors=True)


atexit.register(_cleanup)


def _fiftyone_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("SAMKIT_CHECKPOINT", "SAMKIT_MODEL", "SAMKIT_DEVICE", "SAMKIT_DTYPE", "SAMKIT_MASK_DIR"):
        env.pop(name, None)
    env.update(FIFTYONE_ENV)
    env["HOME"] = str(FIFTYONE_HOME)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def fiftyone_env():
    """``fiftyone_env(**extra)``: environment for a subprocess on this session's database and plugins."""
    return _fiftyone_env


@pytest.fixture(scope="session")
def checkpoint(mobile_sam_checkpoint: Path) -> str:
    if not mobile_sam_checkpoint.is_file():
        pytest.fail(f"seeded MobileSAM checkpoint missing: {mobile_sam_checkpoint}")
    return str(mobile_sam_checkpoint)


@pytest.fixture(scope="session")
def photos(images_dir: Path) -> dict[str, str]:
    found = {p.name: str(p) for p in sorted(images_dir.glob("*.jpg"))}
    missing = sorted(set(BOXES) - set(found))
    if missing:
        pytest.fail(f"shared photos missing from {images_dir}: {missing}")
    return found


@pytest.fixture
def make_dataset():
    """Factory for persistent datasets (delegated workers need persistence), deleted afterwards."""
    created = []

    def make(files, boxes: bool = False, name: str | None = None) -> "fo.Dataset":
        dataset = fo.Dataset(name or f"samkit-{uuid.uuid4().hex[:10]}")
        dataset.persistent = True
        created.append(dataset.name)
        samples = []
        for path in files:
            sample = fo.Sample(filepath=path)
            if boxes:
                sample["gt"] = fol.Detections(
                    detections=[
                        fol.Detection(label=label, bounding_box=box, confidence=0.9, source="hand", iscrowd=False)
                        for label, box in BOXES.get(Path(path).name, [])
                    ]
                )
            samples.append(sample)
        dataset.add_samples(samples)
        return dataset

    yield make
    for name in created:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
