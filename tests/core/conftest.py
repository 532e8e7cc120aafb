"""Fixtures for the core tests: one loaded seeded MobileSAM shared by the session, and the device
the parity tests that honour it run their models on (SAMKIT_TEST_DEVICE, default cpu;
benchmarks/gpu_check.sh sets cuda)."""

from __future__ import annotations

import os

import pytest
import torch

import samkit

TEST_DEVICE = torch.device(os.environ.get("SAMKIT_TEST_DEVICE", "cpu"))
if TEST_DEVICE.type == "cuda":
    # the parity tolerances are float32 rounding: no TF32 in convolutions and products
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope="session")
def test_device() -> torch.device:
    """Where the device-aware parity tests (test_sam2_parity's image path, test_sam2_fast_decoder)
    run the models: $SAMKIT_TEST_DEVICE, default cpu."""
    return TEST_DEVICE


@pytest.fixture(scope="session")
def mobile_sam(mobile_sam_checkpoint) -> samkit.Sam:
    return samkit.load_model(mobile_sam_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def dog_predictor(mobile_sam, images_dir) -> samkit.Predictor:
    predictor = samkit.Predictor(mobile_sam)
    predictor.set_image(images_dir / "dog.jpg")
    return predictor
