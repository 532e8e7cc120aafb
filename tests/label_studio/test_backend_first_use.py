"""What a new Label Studio user meets first: a backend started with a model it cannot load must
refuse to be connected (Label Studio connects a model whose /setup answers 200); a click with the
shipped labeling config answers with a brush mask alone, polygons only when configured."""

from __future__ import annotations

import copy
import pytest
from pathlib import Path

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


SHIPPED = (Path(__file__).resolve().parents[2] / "plugins" / "label_studio" / "label_config.xml").read_text()


def shipped_with_polygons() -> str:
    """The shipped config with its commented-out PolygonLabels tool switched on, as the README says."""
    start = SHIPPED.index("  <PolygonLabels")
    end = SHIPPED.index("</PolygonLabels>") + len("</PolygonLabels>")
    tool = SHIPPED[start:end]
    return SHIPPED.replace("  -->\n  <BrushLabels", "  -->\n" + tool + "\n  <BrushLabels")


def click_body(payloads, image_url: str, config: str) -> dict:
    body = copy.deepcopy(payloads["ls_to_backend_predict_interactive_kp1"]["body"])
    body["tasks"][0]["data"]["image"] = image_url
    body["label_config"] = config
    for region in body["params"]["context"]["result"]:
        region["original_width"], region["original_height"] = 800, 534
        region["from_name"] = "keypoint"
    return body


def click(client, payloads, image_url: str, config: str) -> tuple[dict[str, list], int]:
    response = client.post("/predict", json=click_body(payloads, image_url, config))
    assert response.status_code == 200, response.text
    by_type: dict[str, list] = {}
    for region in response.json()["results"][0]["result"]:
        by_type.setdefault(region["type"], []).append(region)
    return by_type, len(response.content)


def test_a_click_with_the_shipped_config_answers_with_the_brush_alone(make_client, payloads, image_server):
    client, _ = make_client()
    url = f"{image_server.url}/public/dog.jpg"
    brush_only, size = click(client, payloads, url, SHIPPED)
    assert set(brush_only) == {"brushlabels"} and len(brush_only["brushlabels"]) == 1
    both, size_both = click(client, payloads, url, shipped_with_polygons())
    assert set(both) == {"brushlabels", "polygonlabels"}
    assert both["brushlabels"][0]["value"]["rle"] == brush_only["brushlabels"][0]["value"]["rle"]
    # polygons, when configured, stay within their point limit: a bounded addition to the answer
    points = sum(len(r["value"]["points"]) for r in both["polygonlabels"])
    assert points <= 2000 and size_both - size < points * 25 + len(both["polygonlabels"]) * 500


def test_clicks_run_on_one_pytorch_thread_by_default(backend_server, payloads, image_server):
    """SAMKIT_LS_THREADS' default (1 on a CPU): with more threads a click waits for the slowest of
    them at every step, and on a CPU shared with other work that made clicks seconds long
    (benchmarks/bench_label_studio_load.py; benchmarks/RESULTS.md). SAMKIT_LS_CLICK_DTYPE's
    default (auto): the reduced-precision decoder exactly where the CPU multiplies bfloat16."""
    import requests

    from samkit.build import cpu_has_bfloat16_dot_products

    body = copy.deepcopy(payloads["ls_to_backend_predict_interactive_kp1"]["body"])
    body["tasks"][0]["data"]["image"] = f"{image_server.url}/public/dog.jpg"
    for region in body["params"]["context"]["result"]:
        region["original_width"], region["original_height"] = 800, 534
    assert requests.post(f"{backend_server.url}/predict", json=body, timeout=300).status_code == 200
    stats = backend_server.stats()
    assert stats["click_threads"] == 1
    assert stats["click_dtype"] == ("bfloat16" if cpu_has_bfloat16_dot_products() else "float32")


def test_the_thread_setting():
    from samkit.label_studio.settings import Settings

    assert Settings(threads=None).torch_threads("cpu") == 1
    assert Settings(threads=None).torch_threads("cuda") is None  # PyTorch's own default
    assert Settings(threads=0).torch_threads("cpu") is None  # all cores
    assert Settings(threads=3).torch_threads("cpu") == 3


def test_the_click_dtype_setting(monkeypatch):
    import torch

    from samkit import SamkitError
    from samkit.label_studio.settings import Settings

    monkeypatch.setenv("SAMKIT_LS_CLICK_DTYPE", "float32")
    assert Settings.from_env(device="cpu").click_decoder_dtype() == torch.float32
    assert Settings.from_env(device="cpu", click_dtype="bfloat16").click_decoder_dtype() == torch.bfloat16
    for bad, says in (("float16", "needs a GPU"), ("fp8", "decoder_dtype")):
        monkeypatch.setenv("SAMKIT_LS_CLICK_DTYPE", bad)
        with pytest.raises(SamkitError, match=f"SAMKIT_LS_CLICK_DTYPE={bad}: .*{says}"):
            Settings.from_env(device="cpu")


def test_the_answer_is_gzipped_for_a_client_that_asks(make_client, payloads, image_server):
    """Label Studio's client (requests) asks for gzip; the random weights' ragged mask makes a
    brush RLE of hundreds of KB of JSON, which gzip shrinks several times over."""
    client, _ = make_client()
    body = click_body(payloads, f"{image_server.url}/public/dog.jpg", SHIPPED)
    zipped = client.post("/predict", json=body, headers={"Accept-Encoding": "gzip"})
    plain = client.post("/predict", json=body, headers={"Accept-Encoding": "identity"})
    assert zipped.status_code == plain.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert zipped.json()["results"][0]["result"][0]["value"]["rle"] == plain.json()["results"][0]["result"][0][
        "value"]["rle"]
    assert zipped.num_bytes_downloaded * 3 < len(plain.content)
