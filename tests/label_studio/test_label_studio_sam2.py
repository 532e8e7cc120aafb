"""The Label Studio backend takes a SAM 2.1 name with no change of its own: SAMKIT_MODEL=sam2.1_t.pt
loads the SAM 2.1 Hiera-T (its official file in the cache: the seeded random one of
tests/sam2_files.py), and a real click payload answers with the mask samkit.Predictor gives."""

from __future__ import annotations

import shutil

import numpy as np
from ls_helpers import brush_mask

import samkit
from samkit.models import MODEL_CACHE

from test_backend_first_use import SHIPPED, click


def test_a_click_with_samkit_model_sam2_1(sam2_tiny_checkpoint, payloads, image_server, images_dir, tmp_path,
                                          monkeypatch):
    from fastapi.testclient import TestClient

    from samkit.label_studio.app import create_app
    from samkit.label_studio.backend import SamBackend
    from samkit.label_studio.settings import Settings

    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(sam2_tiny_checkpoint, cache / "sam2.1_hiera_tiny.pt")
    monkeypatch.setenv("SAMKIT_HOME", str(cache))
    monkeypatch.setenv("SAMKIT_MODEL", "sam2.1_t.pt")
    MODEL_CACHE.clear()
    try:
        settings = Settings.from_env(device="cpu")
        assert settings.model_source == "sam2.1_t.pt"
        backend = SamBackend(settings)
        backend.load(background=False)
        assert backend.base_model.arch == "sam2.1_hiera_tiny"
        with TestClient(create_app(settings, backend=backend, load=False)) as client:
            regions, _ = click(client, payloads, f"{image_server.url}/public/dog.jpg", SHIPPED)
        model = backend.base_model
    finally:
        MODEL_CACHE.clear()
    predictor = samkit.Predictor(model, decoder_dtype=settings.click_dtype)  # the click's precision
    predictor.set_image(images_dir / "dog.jpg")
    point = payloads["ls_to_backend_predict_interactive_kp1"]["body"]["params"]["context"]["result"][0]["value"]
    masks, scores, _ = predictor.predict(point_coords=np.array([[point["x"] / 100 * 800, point["y"] / 100 * 534]]),
                                         point_labels=np.array([1]))
    assert np.array_equal(brush_mask(regions["brushlabels"][0]), masks[int(np.argmax(scores))])
