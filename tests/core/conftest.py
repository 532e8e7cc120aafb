"""Fixtures for the core tests: one loaded seeded MobileSAM shared by the session."""

from __future__ import annotations

import pytest

import samkit


@pytest.fixture(scope="session")
def mobile_sam(mobile_sam_checkpoint) -> samkit.Sam:
    return samkit.load_model(mobile_sam_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def dog_predictor(mobile_sam, images_dir) -> samkit.Predictor:
    predictor = samkit.Predictor(mobile_sam)
    predictor.set_image(images_dir / "dog.jpg")
    return predictor
