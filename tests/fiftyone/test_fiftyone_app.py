"""The operators in the FiftyOne App: its HTTP API, and the operator browser in headless Chromium."""

from __future__ import annotations

import json
import os

import httpx
import pytest

import fiftyone as fo

from fo_checks import CHROMIUM, check_tight, free_port, image_size, launch_app

URIS = {"@samkit/fiftyone/segment_everything", "@samkit/fiftyone/segment_prompts"}
# Debian's Chromium on this closed network: no background connections, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def app(photos, checkpoint, fiftyone_env):
    """The App server on 127.0.0.1 (its own process, started by fo.launch_app), with the
    checkpoint in its environment as SAMKIT_CHECKPOINT, on a two-photo dataset."""
    name = f"samkit-app-{os.getpid()}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    dataset.persistent = True
    dataset.add_samples([fo.Sample(filepath=photos[f]) for f in ("dog.jpg", "picture1.jpg")])
    port = free_port()
    env = fiftyone_env(SAMKIT_CHECKPOINT=checkpoint)
    session = launch_app(port, dataset, HOME=env["HOME"], SAMKIT_CHECKPOINT=checkpoint)
    yield f"http://127.0.0.1:{port}", dataset
    session.close()
    fo.delete_dataset(name)


def test_operators_listed_over_http(app):
    url, dataset = app
    reply = httpx.post(f"{url}/operators", json={"dataset_name": dataset.name}, timeout=60)
    reply.raise_for_status()
    body = reply.json()
    ours = {op["uri"]: op for op in body["operators"] if op["uri"] in URIS}
    assert set(ours) == URIS
    assert not [e for e in body["errors"] if "samkit" in json.dumps(e)]
    for op in ours.values():
        config = op["config"]
        assert config["can_execute"] and config["allow_delegated_execution"] and config["allow_immediate_execution"]
        assert config["execute_as_generator"] and not config["skip_input"]
    assert ours["@samkit/fiftyone/segment_everything"]["config"]["label"] == "SAM: segment everything"

    reply = httpx.post(f"{url}/operators/resolve-type", timeout=60, json={
        "operator_uri": "@samkit/fiftyone/segment_everything", "dataset_name": dataset.name, "target": "inputs",
        "params": {}})
    reply.raise_for_status()
    props = reply.json()["type"]["properties"]
    assert props["points_per_side"]["default"] == 32 and props["output_field"]["default"] == "sam_everything"


def test_app_offers_only_execute_on_a_non_persistent_dataset(app, photos):
    """The App asks the server which execution modes to offer: a dataset that is not persistent
    cannot be scheduled (a worker would not find it), so only "Execute" is offered; a request to
    schedule anyway is refused with the reason, and nothing is queued."""
    from fiftyone.operators.delegated import DelegatedOperationService

    url, _ = app
    dataset = fo.Dataset()  # not persistent
    try:
        dataset.add_sample(fo.Sample(filepath=photos["dog.jpg"]))
        request = {"operator_uri": "@samkit/fiftyone/segment_everything", "dataset_name": dataset.name,
                   "params": {}, "view": [], "selected": [], "selected_labels": []}
        reply = httpx.post(f"{url}/operators/resolve-execution-options", json=request, timeout=60)
        reply.raise_for_status()
        options = reply.json()
        assert options["allow_immediate_execution"] is True and options["allow_delegated_execution"] is False

        reply = httpx.post(f"{url}/operators/execute", json={**request, "request_delegation": True}, timeout=60)
        assert "set dataset.persistent = True" in reply.text
        assert DelegatedOperationService().list_operations(dataset_name=dataset.name) == []

        dataset.persistent = True
        reply = httpx.post(f"{url}/operators/resolve-execution-options", json=request, timeout=60)
        assert reply.json()["allow_delegated_execution"] is True
    finally:
        dataset.delete()


def test_execute_streams_progress_over_http(app):
    """What the App does when the user presses Execute: the generator endpoint streams
    progress messages while the operator runs in the server process."""
    url, dataset = app
    params = {"output_field": "http_sam", "points_per_side": 2, "pred_iou_thresh": 0.0,
              "stability_score_thresh": 0.0}
    with httpx.stream("POST", f"{url}/operators/execute/generator", timeout=300, json={
            "operator_uri": "@samkit/fiftyone/segment_everything", "dataset_name": dataset.name,
            "params": params, "view": [], "selected": [], "selected_labels": []}) as reply:
        reply.raise_for_status()
        messages = [json.loads(line) for line in reply.iter_lines() if line.strip()]
    triggered = [m["body"]["operator_uri"] for m in messages if m.get("cls") == "InvocationRequest"]
    assert "set_progress" in triggered and "reload_dataset" in triggered and "notify" in triggered
    final = [m["body"]["params"] for m in messages if m.get("cls") == "InvocationRequest"
             and m["body"]["operator_uri"] == "notify"][-1]
    assert final["variant"] == "success" and "2 samples written to 'http_sam'" in final["message"]
    dataset.reload()
    assert dataset.count("http_sam") == 2
    for sample in dataset:
        width, height = image_size(sample.filepath)
        for det in sample.http_sam.detections:
            check_tight(det, width, height)


def _open_operator_browser(page):
    for _ in range(40):  # the App registers its hotkeys once it has loaded; a promo popup may show
        if page.get_by_text("Dismiss").count():
            page.get_by_text("Dismiss").first.click()
        page.mouse.click(700, 600)
        page.keyboard.press("`")
        try:
            page.get_by_placeholder("Search operations").wait_for(timeout=3000)
            return
        except Exception:
            continue
    raise AssertionError("the operator browser did not open")


def _input_after(page, label):
    return page.locator(f"xpath=//*[normalize-space(text())='{label}']/following::input[1]")


def test_operator_browser_in_chromium(app, artifacts_dir):
    from playwright.sync_api import sync_playwright

    url, dataset = app
    assert os.access(CHROMIUM, os.X_OK), "Chromium missing: run tests/setup/fiftyone.sh"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # not "networkidle": the App may keep a request open (e.g. to an unreachable host)
            page.goto(f"{url}/datasets/{dataset.name}", wait_until="load", timeout=120_000)
            _open_operator_browser(page)
            page.keyboard.type("segment")
            page.get_by_text("SAM: segment everything").wait_for(timeout=30_000)
            page.get_by_text("SAM: masks from boxes or keypoints").wait_for(timeout=30_000)
            page.screenshot(path=str(artifacts_dir / "fiftyone_operator_browser.png"))

            # run segment_everything from its form, with a small grid
            page.get_by_text("SAM: segment everything").click()
            for label, value in [("Output field", "app_sam"), ("Points per side", "2"),
                                 ("Predicted IoU threshold", "0"), ("Stability score threshold", "0")]:
                _input_after(page, label).fill(value)
            page.screenshot(path=str(artifacts_dir / "fiftyone_segment_everything_form.png"))
            page.get_by_role("button", name="Execute", exact=True).click()
            page.get_by_text("samples written to 'app_sam'").first.wait_for(timeout=300_000)
            # reload_dataset at the end of the run brings the new field into the sidebar
            page.locator("[data-cy='sidebar-field-app_sam']").wait_for(timeout=60_000)
            page.wait_for_timeout(3000)  # let the grid redraw with the masks for the screenshot
            page.screenshot(path=str(artifacts_dir / "fiftyone_segment_everything_done.png"))
        finally:
            browser.close()
    dataset.reload()
    assert dataset.count("app_sam") == 2
    for sample in dataset:
        width, height = image_size(sample.filepath)
        assert sample.app_sam.detections
        for det in sample.app_sam.detections:
            check_tight(det, width, height)
