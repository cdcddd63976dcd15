"""The page of examples.web in a real Chromium: click, watch the bar, read the result."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import program, serving

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium() -> str:
    return program("chromium")


@pytest.fixture
def site() -> Iterator[str]:
    from examples.web import make_app

    application = make_app()
    try:
        with serving(application) as base:
            yield base
    finally:
        application.close(timeout=5)


def test_button_shows_progress_then_result(chromium: str, site: str) -> None:
    from playwright import sync_api  # in the test extra: missing is a failure

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(site + "/")
            # Record every value the bar takes, from inside the page.
            page.evaluate(
                """() => {
                    window.seenValues = [];
                    const bar = document.getElementById("bar");
                    new MutationObserver(() => {
                        if (bar.hasAttribute("value")) window.seenValues.push(
                            [bar.value, bar.max, document.getElementById("result").textContent]);
                    }).observe(bar, {attributes: true});
                }"""
            )
            page.fill("#name", "q4")
            page.click("#run")
            page.wait_for_function(
                "document.getElementById('result').textContent.includes('rows')",
                timeout=20_000,
            )
            result = page.text_content("#result") or ""
            assert '"report": "q4"' in result
            assert '"rows": 42' in result
            assert "done: 200" in (page.text_content("#status") or "")
            seen = page.evaluate("window.seenValues")
            # The bar moved while the task ran, before the result was shown.
            running = [value for value, _max, text in seen if not text and value > 0]
            assert running, f"the progress bar never moved while running: {seen}"
        finally:
            browser.close()
