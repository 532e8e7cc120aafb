"""An annotator's click in a real browser: headless Chromium (Debian's) driven by Playwright opens
Label Studio's labeling page, turns Auto-Annotation on, clicks the dog with the smart keypoint tool
and sees SAM's suggestion appear; accepting it turns it into regions of the annotation."""

from __future__ import annotations

import json
import re
import time

from ls_helpers import brush_mask

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def test_smart_keypoint_click_shows_sam_suggestion(label_studio, backend_server, images_dir, chromium, artifacts_dir):
    from playwright.sync_api import sync_playwright

    ls = label_studio
    pid = ls.create_project("samkit in the browser", show_collab_predictions=False)
    tid = ls.upload(pid, images_dir / "dog.jpg")
    ls.connect(pid, backend_server.url)
    shot = artifacts_dir / "label_studio_smart_keypoint.png"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            # Only loopback: Label Studio's page also asks for analytics and fonts on the internet.
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                (ls.url, "data:", "blob:")) else route.abort())
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"{ls.url}/user/login/")
            page.fill("input[name=email]", "annotator@example.com")
            page.fill("input[name=password]", "samkit-test-pass")
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r".*/projects.*|.*/$"))

            with page.expect_response(lambda r: re.search(rf"/api/tasks/{tid}\b", r.url) is not None):
                page.goto(f"{ls.url}/projects/{pid}/data?tab=0&task={tid}")
            toggle = page.locator("[data-testid=bottombar-auto-annotation-toggle]")
            toggle.wait_for(state="attached")
            page.locator("img[src*='/data/upload/']").first.wait_for(state="attached")
            page.wait_for_timeout(1000)

            page.locator("label:has-text('Auto-Annotation')").click()
            assert toggle.is_checked()
            # The smart tools sit in their own group of the toolbar, shown on hover.
            page.locator(".lsf-tool_smart:visible").first.hover()
            page.locator(".lsf-tool_smart[aria-label=key-point-tool]").click()
            page.mouse.move(10, 10)
            page.locator(".lsf-label:has-text('Dog')").nth(2).click()  # the KeyPointLabels' "Dog"

            stage = page.locator(".konvajs-content").first.bounding_box()
            assert stage and stage["width"] > 100
            x, y = stage["x"] + 0.30 * stage["width"], stage["y"] + 0.60 * stage["height"]
            t0 = time.perf_counter()
            with page.expect_response(lambda r: "interactive-annotating" in r.url) as resp_info:
                page.mouse.click(x, y)
            resp = resp_info.value
            sent = json.loads(resp.request.post_data)
            click = sent["context"]["result"][0]
            assert sent["task"] == tid and click["is_positive"] is True
            assert click["type"] == "keypointlabels" and click["value"]["keypointlabels"] == ["Dog"]
            answer = resp.json()
            assert "errors" not in answer, answer
            result = answer["data"]["result"]
            brushes = [r for r in result if r["type"] == "brushlabels"]
            assert brushes and brush_mask(brushes[0]).shape == (534, 800)
            assert brushes[0]["value"]["brushlabels"] == ["Dog"]

            # The editor shows the answer as suggestions to accept or reject.
            page.get_by_text(re.compile(rf"{len(result)} suggestions?")).wait_for()
            latency = time.perf_counter() - t0
            page.wait_for_timeout(500)
            page.screenshot(path=str(shot))
            page.locator("[data-testid=bottombar-accept-suggestions-button]").click()  # accept all
            regions = page.locator(".lsf-outliner-item__title")
            regions.first.wait_for()
            titles = [t.strip() for t in regions.all_inner_texts()]
            assert sum("Dog" in t for t in titles) >= 2, titles  # the brush and the polygon(s)
            page.screenshot(path=str(artifacts_dir / "label_studio_smart_keypoint_accepted.png"))
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    print(f"\nbrowser: click to suggestion shown in {latency:.2f} s; screenshot {shot}")
