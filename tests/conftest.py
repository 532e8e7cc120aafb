"""Fixtures shared by every test suite: where the shared test data lives, the seeded checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SAMKIT_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DIR}; set SAMKIT_SHARED_DIR")
    return SHARED_DIR


@pytest.fixture(scope="session")
def images_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "images"


@pytest.fixture(scope="session")
def geo_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "geo"


@pytest.fixture(scope="session")
def mobile_sam_checkpoint(shared_dir: Path) -> Path:
    """The seeded-random MobileSAM checkpoint in the official file format."""
    return shared_dir / "reference" / "mobile_sam_random" / "mobile_sam_random.pt"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep things a person may want to look at (screenshots, overlays)."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def kampala_chips(geo_dir):
    """The Kampala mosaic's 16 chips of 256 px with their OSM footprints in pixels (finetune_data.py)."""
    from finetune_data import kampala_chips

    return kampala_chips(geo_dir)


@pytest.fixture(scope="session")
def kampala_teacher(kampala_chips, mobile_sam_checkpoint, tmp_path_factory):
    """The chips labelled by the seeded random MobileSAM (the teacher), as a COCO JSON, with the
    embeddings in samkit.finetune's store (finetune_data.py)."""
    import samkit
    from finetune_data import write_teacher_coco

    teacher = samkit.load_model(mobile_sam_checkpoint, device="cpu")
    return write_teacher_coco(kampala_chips, teacher, tmp_path_factory.mktemp("kampala-teacher"))


@pytest.fixture(scope="session")
def sam2_tiny_checkpoint(tmp_path_factory) -> Path:
    """A seeded random SAM 2.1 Hiera-T checkpoint in the official format, under its official file
    name (tests/sam2_files.py)."""
    from sam2_files import write_sam2_checkpoint

    return write_sam2_checkpoint(tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt")
