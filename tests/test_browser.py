"""The search page and the report in a real headless browser: Debian's chromium, driven by Playwright.

Playwright never downloads a browser here: it launches the system's chromium (``make browser``, which
``make test`` runs, installs it). Screenshots are kept as test artefacts in ``test-artifacts/`` (or
``$VIDRET_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.sync_api import sync_playwright

from pipeline.index.evaluate import metrics_table
from pipeline.serve import open_app, serving_in_thread

ARTIFACTS = Path(os.environ.get("VIDRET_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))
QUERY = "a large red circle moves left on a black background"


@pytest.fixture(scope="module")
def page(served_run):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("no chromium on PATH: the browser tests need Debian's chromium package; `make browser` installs it")
    app, _ = open_app(served_run, device="cpu")
    with serving_in_thread(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.base_url = url
        yield page
        browser.close()


def api_results(page, query: str, k: int) -> list[dict]:
    return json.loads(page.request.get(f"{page.base_url}/api/search?{urlencode({'q': query, 'k': k})}").text())[
        "results"
    ]


def test_a_typed_query_shows_thumbnails_and_a_click_plays_the_moment(page, served_run):
    expected = api_results(page, QUERY, 12)
    page.goto(f"{page.base_url}/")
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    page.wait_for_selector(".hit img")
    assert "q=a+large+red+circle" in page.url  # the query is in the address: a search is a link

    cards = page.locator(".hit")
    assert cards.count() == len(expected) == 12
    assert cards.nth(0).get_attribute("data-video-id") == expected[0]["video_id"]
    top = cards.nth(0).locator("img")
    top.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=top.element_handle())
    assert top.get_attribute("src") == expected[0]["thumbnail"]
    assert top.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [112, 112]

    # A moment that starts after its video does: playing it must start there.
    chosen = next(number for number, hit in enumerate(expected) if hit["start_s"] > 0)
    hit = expected[chosen]
    page.evaluate(
        """() => { window.playedFrom = null;
                   document.getElementById('player').addEventListener('playing', (event) => {
                       if (window.playedFrom === null) window.playedFrom = event.target.currentTime; }); }"""
    )
    cards.nth(chosen).click()
    page.wait_for_function("window.playedFrom !== null", timeout=30_000)
    frame = 1 / 30  # the synthetic videos' frame rate
    assert abs(page.evaluate("window.playedFrom") - hit["start_s"]) <= frame
    page.wait_for_function(f"document.getElementById('player').currentTime > {hit['start_s'] + 0.2}")  # it plays
    assert page.evaluate("document.getElementById('player').currentSrc").endswith(hit["video"].split("#")[0])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "search-page.png", full_page=True)

    # The same address opened directly gives the same page.
    page.goto(f"{page.base_url}/?{urlencode({'q': QUERY, 'k': 3})}")
    page.wait_for_selector(".hit img")
    assert page.locator(".hit").count() == 3
    assert page.locator(".hit").nth(0).get_attribute("data-video-id") == expected[0]["video_id"]


def test_a_bad_query_shows_the_servers_error_line(page):
    page.goto(f"{page.base_url}/?q=red&k=0")
    page.wait_for_selector("#status.error")
    assert page.text_content("#status") == "k must be from 1 to 1000, got 0"


def test_the_run_page_shows_the_metrics(page, served_run):
    page.goto(f"{page.base_url}/run")
    metrics = json.loads((served_run / "index" / "metrics.json").read_text())
    shown = page.inner_text("body")
    for line in metrics_table(metrics).splitlines():
        assert line in shown
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "run-report.png", full_page=True)
