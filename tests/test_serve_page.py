"""The page at GET / in headless Chromium (Debian's `chromium`, driven by Python Playwright): choose or drop a
photo, the top-5 bars equal Classifier's, the model/engine/precision/time line, the explain switch's overlay,
and the token prompt. Needs /usr/bin/chromium, which .ci/run installs (Playwright comes with the test extra)."""
from __future__ import annotations

import base64
import os
import re

import pytest
from playwright import sync_api
from test_serve import MODEL, ServerProcess, classifier, server  # noqa: E402,F401 - shared fixtures

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
        yield b
        b.close()


def bars(page) -> list[tuple[str, float]]:
    rows = page.locator("#bars .bar")
    return [(rows.nth(i).get_attribute("data-label"), float(rows.nth(i).locator(".pct").inner_text().rstrip("%")))
            for i in range(rows.count())]


def test_choose_a_photo_see_top5_and_explain(server, classifier, browser, photo_files):  # noqa: F811
    expected = classifier.classify([photo_files["camera"]], top=5)[0]
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(server.http + "/")
    page.wait_for_selector("body[data-state=ready]")
    assert page.locator("#model option").all_inner_texts() == [MODEL]
    page.set_input_files("#file", str(photo_files["camera"]))
    page.wait_for_selector("body[data-state=done]")
    got = bars(page)
    assert [label for label, _ in got] == [p.label for p in expected]  # a man behind a camera: tripod first
    for (_, pct), p in zip(got, expected):
        assert abs(pct - 100 * p.probability) <= 0.051
    meta = page.locator("#meta").inner_text()
    assert re.fullmatch(rf"{MODEL} · engine torch · fp32 · \d+ ms", meta), meta
    # The explain switch: the server's Grad-CAM overlay beside the bars, for the top-1 class.
    page.check("#explain")
    page.wait_for_selector("#overlaybox:not([hidden])")
    assert page.locator("#overlaylabel").inner_text().startswith(expected[0].label)
    assert page.locator("#overlay").get_attribute("src").startswith("data:image/jpeg;base64,")
    assert page.evaluate("() => document.getElementById('overlay').naturalWidth") > 0
    page.uncheck("#explain")
    # Drop a photo onto the page.
    data = base64.b64encode(photo_files["coffee"].read_bytes()).decode()
    page.evaluate("""async (b64) => {
        const blob = await (await fetch('data:image/jpeg;base64,' + b64)).blob();
        const dt = new DataTransfer();
        dt.items.add(new File([blob], 'coffee.jpg', {type: 'image/jpeg'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", data)
    page.wait_for_function("() => { const bar = document.querySelector('#bars .bar');"
                           " return bar !== null && bar.dataset.label === 'espresso'; }")
    # A file that is not an image: the server's JSON error shows on the page.
    bad = photo_files["coffee"].parent / "notes.jpg"
    bad.write_text("not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("body[data-state=error]")
    assert "cannot read image" in page.locator("#error").inner_text()
    page.close()


def test_the_page_asks_for_the_token(tmp_path, browser, photo_files):
    token = tmp_path / "token"
    token.write_text("page-token\n")
    s = ServerProcess(["--model", MODEL, "--weights", "random", "--backend", "torch", "--http-port", "0",
                       "--no-grpc", "--token-file", str(token)])
    try:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        asked = []
        page.on("dialog", lambda d: (asked.append(d.message), d.accept("page-token")))
        page.goto(s.http + "/")
        page.wait_for_selector("body[data-state=ready]")
        assert asked and "token" in asked[0]
        page.set_input_files("#file", str(photo_files["chelsea"]))
        page.wait_for_selector("body[data-state=done]")
        assert len(bars(page)) == 5
        page.close()
    finally:
        assert s.stop() == 0
