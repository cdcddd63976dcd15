"""The demo page in a real Chromium follows a task over Server-Sent Events: the
bar moves, the result shows, and the server sees no polling request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import serving
from tests.test_browser import CHROMIUM_ARGS, chromium  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


class Recorder:
    """Logs every request the server gets: method, path, Accept, status."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log: list[tuple[str, str, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        def record(status: str, headers: Any, exc_info: Any = None) -> Any:
            with self.lock:
                self.log.append(
                    (
                        environ["REQUEST_METHOD"],
                        environ.get("PATH_INFO", ""),
                        environ.get("HTTP_ACCEPT", ""),
                        status,
                    )
                )
            return start_response(status, headers, exc_info)

        return self.app(environ, record)


@pytest.fixture
def recorded() -> Iterator[tuple[str, Recorder]]:
    from examples.web import make_app

    application = make_app()
    recorder = Recorder(application)
    try:
        with serving(recorder) as base:
            yield base, recorder
    finally:
        application.close(timeout=5)


def run_report(chromium_path: str, base: str, *, without_event_source: bool) -> list[Any]:
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            if without_event_source:
                page.add_init_script("delete window.EventSource;")
            page.goto(base + "/")
            page.evaluate(
                """() => {
                    window.seenValues = [];
                    const bar = document.getElementById("bar");
                    new MutationObserver(() => {
                        if (bar.hasAttribute("value")) window.seenValues.push(
                            [bar.value, document.getElementById("result").textContent]);
                    }).observe(bar, {attributes: true});
                }"""
            )
            page.fill("#name", "q4")
            page.click("#run")
            page.wait_for_function(
                "document.getElementById('result').textContent.includes('rows')",
                timeout=20_000,
            )
            assert '"report": "q4"' in (page.text_content("#result") or "")
            assert "done: 200" in (page.text_content("#status") or "")
            seen: list[Any] = page.evaluate("window.seenValues")
            return seen
        finally:
            browser.close()


def test_event_source_moves_the_bar_with_no_polls(
    chromium: str,  # noqa: F811
    recorded: tuple[str, Recorder],
) -> None:
    base, recorder = recorded
    seen = run_report(chromium, base, without_event_source=False)
    running = [value for value, text in seen if not text and value > 0]
    assert len(set(running)) >= 2, f"the bar did not move while running: {seen}"
    status = [entry for entry in recorder.log if entry[1].startswith("/status/")]
    streams = [entry for entry in status if entry[2] == "text/event-stream"]
    plain = [entry for entry in status if entry[2] != "text/event-stream"]
    assert streams and all(entry[3] == "200 OK" for entry in streams), status
    # One plain GET: the result, after the done event. No 202: no polling.
    assert [(method, answer) for method, _, _, answer in plain] == [("GET", "200 OK")], status
    assert len(streams) == 1, status


def test_without_event_source_the_page_polls(
    chromium: str,  # noqa: F811
    recorded: tuple[str, Recorder],
) -> None:
    base, recorder = recorded
    seen = run_report(chromium, base, without_event_source=True)
    assert [value for value, text in seen if not text and value > 0]
    status = [entry for entry in recorder.log if entry[1].startswith("/status/")]
    assert all(entry[2] != "text/event-stream" for entry in status)
    assert sum(entry[3].startswith("202") for entry in status) >= 2
