"""The web page at / in a real browser: Playwright driving Debian's Chromium against the live service.

Set WEB_SCREENSHOTS=docs/screenshots to save a picture of each state (docs/getting-started.md shows them).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SHARED, labelled_photos, screenshot


@pytest.fixture
def page(browser, service) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.goto(service.url + "/")
    yield page
    context.close()


def test_a_photo_shows_its_labels_as_bars(page):
    row = labelled_photos()[0]
    page.set_input_files("#files", str(SHARED / row["path"]))
    page.wait_for_selector("#results:not([hidden]) .bars li", timeout=60_000)
    labels = page.locator("#results .bars .label").all_text_contents()
    assert len(labels) == 5 and labels[0] == row["expected_label"]
    assert page.locator("#results img").get_attribute("alt").endswith(Path(row["path"]).name)
    assert page.locator("#result-link").is_visible()
    screenshot(page, "web-image")


def test_the_drop_zone_works_from_the_keyboard(page):
    """Tab to the drop zone and press Enter or Space: the file picker opens (its click is recorded)."""
    page.evaluate("""() => {
        window.picks = 0;
        document.getElementById('files').click = () => { window.picks += 1; };
    }""")
    page.keyboard.press("Tab")
    for _ in range(5):  # past the header's links to the drop zone
        if page.evaluate("document.activeElement.id") == "drop":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "drop"
    page.keyboard.press("Enter")
    page.keyboard.press(" ")
    assert page.evaluate("window.picks") == 2
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"  # focus is visible


def test_a_video_shows_progress_then_its_summary_and_timeline(page):
    with open(SHARED / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        expected = next(r["expected_label"] for r in csv.DictReader(f, delimiter="\t")
                        if r["path"] == "video/cockatoo.mp4")
    page.fill("#fps", "1")
    # Record every value the page gives the progress bar.
    page.evaluate("""() => {
        window.seen = [];
        const bar = document.getElementById('progress');
        new MutationObserver(() => window.seen.push([bar.value, bar.max])).observe(bar, {attributes: true});
    }""")
    page.set_input_files("#files", str(SHARED / "video" / "cockatoo.mp4"))
    page.wait_for_selector("#summary-label", timeout=120_000)
    assert page.locator("#summary-label").text_content() == expected
    seen = page.evaluate("window.seen")
    values = [value for value, _ in seen]
    assert values == sorted(values) and values[0] < values[-1] == 14 and seen[-1][1] == 14, seen
    assert page.locator(".timeline span").count() == page.locator(".segments li").count() >= 2
    # Each label its own colour, the same one wherever it appears.
    spans = page.evaluate("""() => [...document.querySelectorAll('.timeline span')].map(
        (s) => [s.title.split(': ').slice(1).join(': '), getComputedStyle(s).backgroundColor])""")
    colours = {label: {c for other, c in spans if other == label} for label, _ in spans}
    assert all(len(c) == 1 for c in colours.values()) and len({c.pop() for c in colours.values()}) == len(colours)
    screenshot(page, "web-video")


def test_a_file_that_is_not_an_image_gets_a_readable_error(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list: eggs, milk")
    page.set_input_files("#files", str(notes))
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=30_000)
    assert "not a file this service can read" in error.text_content()
    assert page.locator("#results").is_hidden()
    screenshot(page, "web-error")


def test_readable_at_phone_width(browser, service):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page = context.new_page()
    page.goto(service.url + "/")
    row = labelled_photos()[2]
    page.set_input_files("#files", str(SHARED / row["path"]))
    page.wait_for_selector("#results:not([hidden]) .bars li", timeout=60_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways on a phone"
    assert page.locator("label[for=model]").is_visible() and page.locator("label[for=fps]").is_visible()
    screenshot(page, "web-phone")
    context.close()


@pytest.fixture(scope="module")
def api_with_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API with API_KEYS set (and no worker: accepted work just waits)."""
    import subprocess

    from imageclf.launch.redis_server import free_port, ping, redis_argv
    from imageclf.launch.supervise import wait_until
    from tests.helpers import start_api

    port = free_port()
    server = subprocess.Popen(redis_argv(port, str(tmp_path_factory.mktemp("redis-web")), durable=False))
    assert wait_until(lambda: ping(f"redis://127.0.0.1:{port}/0"), 15)
    api, url = start_api(f"redis://127.0.0.1:{port}/0", {"API_KEYS": "web-key-1234",
                                                         "UPLOAD_DIR": str(tmp_path_factory.mktemp("web-up"))})
    yield url
    api.terminate()
    api.wait(20)
    server.terminate()
    server.wait(10)


def test_with_api_keys_the_page_asks_once_and_keeps_the_key_in_the_tab(browser, api_with_keys):
    context = browser.new_context()
    page = context.new_page()
    page.goto(api_with_keys + "/")
    photos = [str(SHARED / r["path"]) for r in labelled_photos()[:2]]
    page.set_input_files("#files", photos)
    page.locator("#error").wait_for(state="visible", timeout=10_000)
    assert "API key is needed" in page.locator("#error").text_content()

    def submit_with(key: str) -> int:
        page.fill("#api-key", key)
        with page.expect_response(lambda r: "/jobs?" in r.url) as answer:
            page.set_input_files("#files", photos)
        return answer.value.status

    assert submit_with("wrong-key") == 401
    page.locator("#error").wait_for(state="visible", timeout=10_000)
    assert "not valid" in page.locator("#error").text_content()

    assert submit_with("web-key-1234") == 202
    page.wait_for_selector("#job:not([hidden])", timeout=10_000)
    page.wait_for_function("document.getElementById('progress-label').textContent === '0 of 2 done'")
    assert page.locator("#error").is_hidden()
    page.reload()  # the key stays in this tab
    assert page.input_value("#api-key") == "web-key-1234"
    context.close()
