"""What a new Label Studio user meets first: a backend started with a model it cannot load must
refuse to be connected (Label Studio connects a model whose /setup answers 200)."""

from __future__ import annotations

from ls_helpers import CONFIG_ALL


def test_setup_answers_an_error_when_the_model_cannot_load(tmp_path):
    from fastapi.testclient import TestClient

    from samkit.label_studio.app import create_app
    from samkit.label_studio.backend import SamBackend
    from samkit.label_studio.settings import Settings

    settings = Settings.from_env(checkpoint=str(tmp_path / "sam_vit_b.pth"), device="cpu")
    backend = SamBackend(settings)
    backend.load(background=False)
    with TestClient(create_app(settings, backend=backend, load=False)) as client:
        health = client.get("/health")
        assert health.status_code == 503
        setup = client.post("/setup", json={"project": "1.1", "schema": CONFIG_ALL, "hostname": "http://ls:8080",
                                            "access_token": "x", "model_version": "samkit"})
        assert setup.status_code == 503
        error = setup.json()["error"]
        assert error.startswith("the samkit backend cannot predict: no checkpoint file at")
        assert str(tmp_path / "sam_vit_b.pth") in error
