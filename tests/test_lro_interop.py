"""A long-running-operation client nobody here wrote follows asyncwsgi's tasks:
azure-core's ``LROPoller`` with ``LROBasePolling``, the poller Azure SDKs
build on (it follows ``Location`` while it answers 202, as Microsoft's REST
guidelines describe, and wants that URL absolute)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from asyncwsgi import AsyncMiddleware
from tests.helpers import need, serving


def _need_azure_core() -> None:
    need("azure.core")


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    time.sleep(0.3)
    if environ["PATH_INFO"] == "/jobs/fail":
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"the report could not be built\n"]
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"report": "' + body + b'"}']


class Site:
    """The served app, set once the server's address (its location_base) is known."""

    middleware: AsyncMiddleware | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        assert self.middleware is not None
        return self.middleware(environ, start_response)


@pytest.fixture
def base_url() -> Iterator[str]:
    site = Site()
    with serving(site) as base:
        site.middleware = AsyncMiddleware(app, paths=["/jobs/*"], location_base=base)
        try:
            yield base
        finally:
            site.middleware.close(timeout=10)


def _poller(base: str, path: str, body: bytes) -> Any:
    from azure.core import PipelineClient
    from azure.core.polling import LROPoller
    from azure.core.polling.base_polling import LROBasePolling
    from azure.core.rest import HttpRequest

    client: Any = PipelineClient(base_url=base)
    initial = client._pipeline.run(HttpRequest("POST", base + path, content=body))
    assert initial.http_response.status_code == 202

    def deserialize(pipeline_response: Any) -> Any:
        return pipeline_response.http_response.json()

    return LROPoller(client, initial, deserialize, LROBasePolling(timeout=0.1))


def test_azure_core_poller_follows_a_task_to_its_result(base_url: str) -> None:
    _need_azure_core()
    poller = _poller(base_url, "/jobs/report", b"q3")
    assert poller.result(timeout=30) == {"report": "q3"}
    assert poller.status() == "Succeeded"


def test_azure_core_poller_reports_an_app_500_as_a_failure(base_url: str) -> None:
    _need_azure_core()
    from azure.core.exceptions import HttpResponseError

    poller = _poller(base_url, "/jobs/fail", b"")
    with pytest.raises(HttpResponseError) as caught:
        poller.result(timeout=30)
    assert caught.value.status_code == 500
    assert poller.status() == "Failed"


def test_without_location_base_the_poller_cannot_follow() -> None:
    # The control: a path in Location, as RFC 9110 allows, is refused by this
    # client; location_base is what makes it work.
    _need_azure_core()
    mw = AsyncMiddleware(app, paths=["/jobs/*"])
    try:
        with serving(mw) as base:
            poller = _poller(base, "/jobs/report", b"q3")
            with pytest.raises(Exception, match="[Ss]cheme"):
                poller.result(timeout=30)
    finally:
        mw.close(timeout=10)
