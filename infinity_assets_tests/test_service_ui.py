"""The viewer page of `infinity-assets serve` in headless Chromium, on the real Infinity server and SeaweedFS.

A query is typed into the page; the result cards must show, in the screenshot, the thumbnails the API serves
(compared pixel by pixel with the served pictures, not only that something loaded). Screenshots go to
test-artifacts/.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from PIL import Image

from infinity_assets_tests.test_service import corpus, s3_env, second, served, two  # noqa: F401 -- fixtures

pytestmark = pytest.mark.ui

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)


def _search(page, url: str, query: str, corpus: str | None = None) -> None:
    page.goto(url + "/", wait_until="domcontentloaded")
    if corpus is not None:
        page.wait_for_function("(name) => [...document.querySelectorAll('#corpus option')]"
                               ".some((option) => option.value === name)", arg=corpus, timeout=30_000)
        page.select_option("#corpus", corpus)
    page.select_option("#modality", "images")
    page.fill("#q", query)
    page.click("button[type=submit]")
    page.wait_for_function("""() => {
        const images = [...document.querySelectorAll('.card img')];
        return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
    }""", timeout=60_000)


def _crop(screenshot: Image.Image, box: dict) -> np.ndarray:
    left, top = round(box["x"]), round(box["y"])
    return np.asarray(screenshot.crop((left, top, left + round(box["width"]), top + round(box["height"]))))


def test_a_typed_query_shows_result_cards_with_the_pages_thumbnails(served):
    from playwright.sync_api import sync_playwright

    app = served()
    expected = app.get("/search", params={"q": "report page 2", "modality": "images"}).json()["hits"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        _search(page, app.url, "report page 2")
        cards = page.locator(".card")
        assert cards.count() == len(expected) == 4
        shot_bytes = page.screenshot(path=str(ARTIFACTS / "service-results.png"), full_page=True)
        screenshot = Image.open(io.BytesIO(shot_bytes)).convert("RGB")
        for index, hit in enumerate(expected):
            card = cards.nth(index)
            assert card.locator(".doc").inner_text() == hit["doc_id"]
            assert card.locator(".score").inner_text() == f"{hit['score']:.4f}"
            if hit["page"] is not None:
                assert card.locator(".pageno").inner_text() == f"page {hit['page']}"
                assert card.locator(".snippet").inner_text() == hit["snippet"]
            box = card.locator("img.page").bounding_box()
            assert box["width"] > 100 and box["height"] > 60, box
            shown = _crop(screenshot, box)
            assert shown.std() > 10  # not blank: the page's text and shapes, or the photo's two colours
            served_thumb = Image.open(io.BytesIO(app.get(hit["image_url"] + "&size=320").content)).convert("RGB")
            reference = np.asarray(served_thumb.resize(shown.shape[1::-1], Image.Resampling.BILINEAR))
            assert np.abs(shown.astype(int) - reference.astype(int)).mean() < 20, hit["doc_id"]
        browser.close()


def test_the_similarity_map_is_drawn_over_the_thumbnails(served):
    from playwright.sync_api import sync_playwright

    app = served()
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        _search(page, app.url, "report page 2")
        thumb = page.locator(".card").first.locator(".thumb")
        box = thumb.bounding_box()
        before = _crop(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB"), box)
        page.check("#maps")
        page.wait_for_function("""() => {
            const maps = [...document.querySelectorAll('.card img.overlay')];
            return maps.length === 4 && maps.every((img) => img.complete && img.naturalWidth > 0);
        }""", timeout=60_000)
        overlay_box = page.locator(".card").first.locator("img.overlay").bounding_box()
        assert overlay_box == page.locator(".card").first.locator("img.page").bounding_box()
        after_bytes = page.screenshot(path=str(ARTIFACTS / "service-similarity.png"), full_page=True)
        after = _crop(Image.open(io.BytesIO(after_bytes)).convert("RGB"), box)
        redder = after[..., 0].astype(int) - after[..., 2].astype(int) - (before[..., 0].astype(int)
                                                                          - before[..., 2].astype(int))
        assert redder.mean() > 5  # the orange-red heat map lies over the page
        browser.close()


def test_with_an_api_key_the_browser_logs_in_and_sees_the_cards(served):
    from playwright.sync_api import sync_playwright

    key = "browser-key-0123"
    app = served(api_key=key)
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        assert browser.new_context().request.get(app.url + "/").status == 401  # no login, no page
        context = browser.new_context(http_credentials={"username": "me", "password": key})
        page = context.new_page()
        _search(page, app.url, "report page 1")
        assert page.locator(".card img.page").count() == 4
        browser.close()


def test_the_viewer_offers_each_served_corpus_and_searches_the_chosen_one(two, second):
    from playwright.sync_api import sync_playwright

    expected = two.get("/search", params={"q": "memo page 1", "corpus": "memos", "modality": "images"}).json()
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        _search(page, two.url, "memo page 1", corpus="memos")
        options = page.locator("#corpus option")
        assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["docs", "memos"]
        assert options.nth(1).get_attribute("title") == f"s3://{second.bucket}"
        cards = page.locator(".card")
        assert [cards.nth(i).locator(".doc").inner_text() for i in range(cards.count())] == [
            hit["doc_id"] for hit in expected["hits"]]
        assert {"memo.pdf#page=1", "memo.pdf#page=2", "photo.png"} == {hit["doc_id"] for hit in expected["hits"]}
        status = page.locator("#status").inner_text()
        assert status.startswith("3 results from corpus memos, images index (colqwen2-tiny)"), status
        assert "corpus=memos" in page.url
        page.screenshot(path=str(ARTIFACTS / "service-corpora.png"), full_page=True)
        browser.close()


def test_the_viewer_says_which_corpora_there_are_when_the_address_names_another(two):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page()
        page.goto(two.url + "/?" + urlencode({"q": "rockets", "corpus": "manuals", "modality": "text"}))
        page.wait_for_function("() => document.getElementById('status').className === 'error'", timeout=30_000)
        message = page.locator("#status").inner_text()
        assert "no corpus 'manuals' here: this service serves 'docs', 'memos'" in message, message
        assert page.locator(".card").count() == 0
        browser.close()
