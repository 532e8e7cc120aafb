"""Fixtures for the GIS tests (helpers live in geo_helpers.py)."""

from __future__ import annotations

import pytest
from geo_helpers import ATLANTA, ATLANTA_LABELS, KAMPALA, KAMPALA_LABELS, label_raster_from_footprints


@pytest.fixture(scope="session")
def kampala_truth(geo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kampala") / "kampala_labels.tif"
    return label_raster_from_footprints(geo_dir, KAMPALA, KAMPALA_LABELS, out)


@pytest.fixture(scope="session")
def atlanta_truth(geo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("atlanta") / "atlanta_labels.tif"
    return label_raster_from_footprints(geo_dir, ATLANTA, ATLANTA_LABELS, out)
