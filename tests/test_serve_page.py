"""The page at GET / in headless Chromium (Debian's `chromium`, driven by Python Playwright): choose or drop a
photo, the top-5 bars equal Classifier's, the model/engine/precision/time line, the explain switch's overlay,
the token prompt; only the latest photo's answer shows, a failure clears what came before and says what went
wrong in a sentence, a wrong token asks again, a running request shows, the overlay's label agrees with the bars.
Needs /usr/bin/chromium, which .ci/run installs (Playwright comes with the test extra).

Requests that must wait (to see the busy state, or to make an answer arrive late) are held with page.route and
then passed on to the real server: no answer is made up."""
from __future__ import annotations

import base64
import os
import re
import time

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


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text("page-token\n")
    s = ServerProcess(["--model", MODEL, "--weights", "random", "--backend", "torch", "--http-port", "0",
                       "--no-grpc", "--token-file", str(token)])
    yield s
    assert s.stop() == 0


def open_page(browser, url: str, timeout_ms: int = 60_000):
    page = browser.new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(url + "/")
    return page


def until(page, condition, seconds: float = 30) -> None:
    """Wait for a condition on the Python side (a held route, an event) while Playwright keeps dispatching."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(20)


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


def test_the_page_asks_for_the_token(token_server, browser, photo_files):
    page = browser.new_page()
    page.set_default_timeout(60_000)
    asked = []
    page.on("dialog", lambda d: (asked.append(d.message), d.accept("page-token")))
    page.goto(token_server.http + "/")
    page.wait_for_selector("body[data-state=ready]")
    assert asked and "token" in asked[0]
    page.set_input_files("#file", str(photo_files["chelsea"]))
    page.wait_for_selector("body[data-state=done]")
    assert len(bars(page)) == 5
    page.close()


def test_only_the_latest_photo_is_answered(server, classifier, browser, photo_files):  # noqa: F811
    """A second photo chosen while the first is still asked about: the first answer, arriving last, is dropped."""
    coffee = classifier.classify([photo_files["coffee"]], top=5)[0]
    page = open_page(browser, server.http)
    page.wait_for_selector("body[data-state=ready]")
    held, settled = [], []
    page.on("requestfinished", lambda r: settled.append(r))
    page.on("requestfailed", lambda r: settled.append(r))

    def hold_the_first(route):
        if held:
            route.continue_()
        else:
            held.append(route)
    page.route("**/infer", hold_the_first)
    page.set_input_files("#file", str(photo_files["camera"]))
    until(page, lambda: held)
    page.set_input_files("#file", str(photo_files["coffee"]))
    page.wait_for_selector("body[data-state=done]")
    assert [label for label, _ in bars(page)] == [p.label for p in coffee]
    # The camera's request goes on to the server now (a no-op if the page has cancelled it); once the browser has
    # its answer or its failure, a few more turns of the page's event loop let any handler still waiting run.
    first = held[0].request
    held[0].continue_()
    until(page, lambda: first in settled)
    page.evaluate("() => new Promise((done) => setTimeout(done, 300))")
    assert [label for label, _ in bars(page)] == [p.label for p in coffee]
    assert page.locator("#photo").get_attribute("alt") == "coffee.jpg"
    assert page.locator("body").get_attribute("data-state") == "done"
    page.close()


def test_a_failure_clears_what_came_before(server, browser, photo_files):  # noqa: F811
    page = open_page(browser, server.http)
    page.wait_for_selector("body[data-state=ready]")
    page.check("#explain")
    page.set_input_files("#file", str(photo_files["camera"]))
    page.wait_for_selector("body[data-state=done]")
    assert len(bars(page)) == 5 and page.locator("#overlaybox").is_visible()
    bad = photo_files["camera"].parent / "not-a-photo.jpg"
    bad.write_bytes(b"%PDF-1.4 not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("body[data-state=error]")
    assert bars(page) == [] and page.locator("#meta").inner_text() == ""
    assert not page.locator("#overlaybox").is_visible()
    assert page.locator("#error").is_visible()
    # The next photo clears the error.
    page.set_input_files("#file", str(photo_files["camera"]))
    page.wait_for_selector("body[data-state=done]")
    assert len(bars(page)) == 5 and not page.locator("#error").is_visible()
    page.close()


def test_errors_are_sentences_with_the_servers_words_beside(server, browser, photo_files):  # noqa: F811
    page = open_page(browser, server.http)
    page.wait_for_selector("body[data-state=ready]")
    bad = photo_files["camera"].parent / "notes.png"
    bad.write_text("a shopping list")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("body[data-state=error]")
    assert page.locator("#errortext").inner_text() == "This file is not an image the server can read."
    detail = page.locator("#errordetail").inner_text()
    assert "cannot read image" in detail and page.locator("#error").get_attribute("title") == detail
    assert not page.locator("#retry").is_visible()  # the same file would fail the same way
    # A real 504: the explain request goes to the server with a deadline of 1 microsecond.
    page.route("**/explain*", lambda route: route.continue_(url=route.request.url + "&timeout=1"))
    page.set_input_files("#file", str(photo_files["camera"]))
    page.wait_for_selector("body[data-state=done]")
    page.check("#explain")
    page.wait_for_selector("body[data-state=error]")
    assert page.locator("#errortext").inner_text() == "The server took too long to answer. Try again in a moment."
    assert "deadline" in page.locator("#errordetail").inner_text()
    assert len(bars(page)) == 5  # the photo's own classification stands; only its explanation failed
    page.unroute("**/explain*")
    page.click("#retry")
    page.wait_for_selector("body[data-state=done]")
    assert page.locator("#overlaybox").is_visible() and not page.locator("#error").is_visible()
    page.close()


def test_a_wrong_token_can_be_corrected(token_server, browser, photo_files):
    answers, asked = ["wrong-token", "page-token"], []
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.on("dialog", lambda d: (asked.append(d.message), d.accept(answers.pop(0))))
    page.goto(token_server.http + "/")
    page.wait_for_selector("body[data-state=ready]")
    assert len(asked) == 2 and "not accepted" in asked[1]
    assert page.locator("#model option").all_inner_texts() == [MODEL]
    page.close()
    # Cancelled at the prompt: the page says so and offers to try again, without a reload.
    page = browser.new_page()
    page.set_default_timeout(60_000)
    answers = [None, "page-token"]
    page.on("dialog", lambda d: d.dismiss() if answers.pop(0) is None else d.accept("page-token"))
    page.goto(token_server.http + "/")
    page.wait_for_selector("body[data-state=error]")
    assert page.locator("#errortext").inner_text() == "The server's token is missing or wrong."
    assert page.locator("#model option").count() == 0
    page.click("#retry")
    page.wait_for_selector("body[data-state=ready]")
    assert page.locator("#model option").all_inner_texts() == [MODEL]
    page.set_input_files("#file", str(photo_files["chelsea"]))
    page.wait_for_selector("body[data-state=done]")
    assert len(bars(page)) == 5
    page.close()


def test_a_running_request_shows(server, browser, photo_files):  # noqa: F811
    page = open_page(browser, server.http)
    page.wait_for_selector("body[data-state=ready]")
    assert not page.locator("#status").is_visible()
    held = []
    page.route("**/infer", lambda route: held.append(route))
    page.set_input_files("#file", str(photo_files["camera"]))
    until(page, lambda: held)
    assert page.locator("body").get_attribute("data-state") == "busy"
    assert page.locator("body").get_attribute("aria-busy") == "true"
    assert page.locator("#status").is_visible()
    assert page.locator("#statustext").inner_text() == "Looking at camera.jpg…"
    held[0].continue_()
    page.wait_for_selector("body[data-state=done]")
    assert not page.locator("#status").is_visible() and page.locator("body").get_attribute("aria-busy") is None
    page.close()


@pytest.fixture(scope="module")
def bf16_server():
    """An engine whose probabilities differ from the torch fp32 model that Grad-CAM runs on."""
    s = ServerProcess(["--model", MODEL, "--weights", "imagenet", "--backend", "torch", "--precision", "bf16",
                       "--http-port", "0", "--no-grpc"])
    yield s
    assert s.stop() == 0


def test_the_overlay_label_says_what_the_bars_say(bf16_server, classifier, browser, photo_files):  # noqa: F811
    page = open_page(browser, bf16_server.http)
    page.wait_for_selector("body[data-state=ready]")
    page.check("#explain")
    with page.expect_request("**/explain*") as explain:
        page.set_input_files("#file", str(photo_files["camera"]))
    page.wait_for_selector("body[data-state=done]")
    (label, pct), *_ = bars(page)
    index = int(re.search(r"\(class (\d+)\)", page.locator("#bars .bar .name").first.get_attribute("title"))[1])
    assert page.locator("#meta").inner_text().startswith(f"{MODEL} · engine torch · bf16 ·")
    assert explain.value.url.endswith(f"/explain?target={index}")  # the overlay is of the bars' top class
    assert re.fullmatch(rf"{re.escape(label)}, {pct:.1f}%, \d+ ms", page.locator("#overlaylabel").inner_text())
    # What makes this worth a test: Grad-CAM runs the torch fp32 model, whose probability for the class is not
    # the bf16 engine's.
    fp32 = classifier.probabilities([photo_files["camera"]])[0][index]
    assert f"{100 * fp32:.1f}" != f"{pct:.1f}"
    page.close()
