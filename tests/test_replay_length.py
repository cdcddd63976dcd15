"""A replayed body whose length is stored is sent with ``Content-Length``
(and so without ``Transfer-Encoding: chunked``), even when the app sent none:
a download says its size, and a cut connection cannot pass for the end.
Through real servers, which chunk a response of unknown length."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import wsgi_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(params=["gunicorn-gthread", "waitress"])
def port(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    with wsgi_server(request.param, "tests.apps.unsized_app:application", tmp_path / "log") as p:
        yield p


def _ask(port: int, method: str, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=b"" if method == "POST" else None)
    answer = connection.getresponse()
    answer.read()  # the body, kept by the caller through .length checks below
    connection.close()
    return answer


def _result(port: int, path: str) -> str:
    submitted = _ask(port, "POST", path)
    assert submitted.status == 202
    location = submitted.getheader("Location")
    assert location is not None
    for _ in range(100):
        polled = _ask(port, "GET", location)
        if polled.status != 202:
            return location
        time.sleep(0.1)
    raise AssertionError(f"{path} was not done")


def _headers_and_body(port: int, method: str, location: str) -> tuple[dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, location)
        answer = connection.getresponse()
        body = answer.read()
        assert answer.status == 200, (answer.status, body[:200])
        return {name.lower(): value for name, value in answer.getheaders()}, body
    finally:
        connection.close()


@pytest.mark.parametrize(
    "size",
    [pytest.param(1000, id="in memory"), pytest.param(3 * 2**20 + 17, id="spooled to the store")],
)
def test_a_replayed_body_says_its_length(port: int, size: int) -> None:
    location = _result(port, f"/unsized/{size}")
    headers, body = _headers_and_body(port, "GET", location)
    assert len(body) == size
    assert headers.get("content-length") == str(size), headers
    assert "transfer-encoding" not in headers, headers
    head, nothing = _headers_and_body(port, "HEAD", location)
    assert nothing == b"" and head.get("content-length") == str(size), head


def test_a_result_without_a_body_gets_no_length(port: int) -> None:
    location = _result(port, "/unsized/empty")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", location)
        answer = connection.getresponse()
        assert answer.status == 204 and answer.read() == b""
        assert answer.getheader("Content-Length") is None
    finally:
        connection.close()
