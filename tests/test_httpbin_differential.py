"""A real third-party app gives, through 202 and polling, the very response a
direct call gives."""

from __future__ import annotations

import gzip
import http.client
import json
from typing import Any
from urllib.parse import unquote

import httpbin
import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware

from .helpers import captured_headers, serving, wait_done

CASES = [
    pytest.param("GET", "/get?a=1&a=2", None, id="get-query"),
    pytest.param("POST", "/post", b'{"x": [1, 2]}', id="post-json"),
    pytest.param("PUT", "/put", b"raw body bytes", id="put"),
    pytest.param("PATCH", "/patch", b"a=1&b=2", id="patch-form"),
    pytest.param("DELETE", "/delete", b"", id="delete"),
    pytest.param("GET", "/redirect/2", None, id="redirect"),
    pytest.param("GET", "/cookies/set?flavour=oat&size=big", None, id="set-cookies"),
    pytest.param("GET", "/response-headers?X-A=1&X-A=2", None, id="duplicate-headers"),
    pytest.param("GET", "/gzip", None, id="gzip"),
    pytest.param("GET", "/deflate", None, id="deflate"),
    pytest.param("GET", "/stream/7", None, id="streamed"),
    pytest.param("GET", "/stream-bytes/3000?seed=4&chunk_size=100", None, id="stream-bytes"),
    pytest.param("GET", "/status/418", None, id="teapot"),
    pytest.param("GET", "/base64/aGVsbG8=", None, id="base64"),
]


@pytest.fixture(scope="module")
def wrapped():
    mw = AsyncMiddleware(
        httpbin.app,
        paths=["/*"],
        methods=("GET", "POST", "PUT", "PATCH", "DELETE"),
        status_path="/_async/",
    )
    yield mw
    mw.close(timeout=10)


def _call(client: Client, method: str, path: str, body: bytes | None, **kw: Any):
    headers = {"Cookie": "session=s1", "Content-Type": "application/json"}
    # buffered: httpbin's seeded streams share the global random state, so a
    # lazily read direct response would interleave with the task's
    return client.open(path, method=method, data=body, headers=headers, buffered=True, **kw)


def _without_gzip_mtime(data: bytes) -> bytes:
    # httpbin gzips with the clock: bytes 4-7 of a gzip member are its mtime
    # in whole seconds, so two calls a second boundary apart differ there
    # whoever runs them. Every other byte must be equal.
    if data[:2] == b"\x1f\x8b" and len(data) >= 10:
        return data[:4] + b"\0\0\0\0" + data[8:]
    return data


def _same(direct, replayed) -> None:
    assert replayed.status == direct.status
    sent = direct.headers.to_wsgi_list()
    assert captured_headers(replayed.headers.to_wsgi_list(), sent) == sent
    assert _without_gzip_mtime(replayed.get_data()) == _without_gzip_mtime(direct.get_data())


@pytest.mark.parametrize("method, path, body", CASES)
def test_task_response_equals_direct_response(wrapped, method, path, body):
    direct = _call(Client(httpbin.app), method, path, body)
    client = Client(wrapped)
    submitted = _call(client, method, path, body)
    assert submitted.status_code == 202
    _same(direct, wait_done(client, submitted.headers["Location"]))


# Mounts as they appear in a URL: the last two need percent-encoding.
MOUNTS = ["/mount", "/my%20app", "/caf%C3%A9"]


@pytest.mark.parametrize("mount", MOUNTS)
@pytest.mark.parametrize("method, path, body", CASES[:4])
def test_same_when_mounted_under_a_script_name(wrapped, method, path, body, mount):
    base = "http://localhost" + mount
    direct = _call(Client(httpbin.app), method, path, body, base_url=base)
    client = Client(wrapped)
    submitted = _call(client, method, path, body, base_url=base)
    location = submitted.headers["Location"]
    assert location.startswith(mount + "/_async/")
    replayed = wait_done(client, location.removeprefix(mount), base_url=base)
    _same(direct, replayed)
    url = json.loads(replayed.get_data())["url"]  # as werkzeug quotes it
    assert unquote(url).startswith(f"http://localhost{unquote(mount)}/")


def test_through_a_real_server(wrapped):
    with serving(httpbin.app) as direct_url, serving(wrapped) as wrapped_url:

        def request(base: str, method: str, path: str, body: bytes | None = None):
            host = base.removeprefix("http://")
            conn = http.client.HTTPConnection(host, timeout=10)
            try:
                conn.request(method, path, body=body, headers={"Content-Type": "text/plain"})
                response = conn.getresponse()
                return response.status, response.getheaders(), response.read()
            finally:
                conn.close()

        for method, path, body in [("POST", "/post", b"hello"), ("GET", "/gzip", None)]:
            status, headers, data = request(wrapped_url, method, path, body)
            assert status == 202
            location = dict(headers)["Location"]
            while status == 202:
                status, headers, data = request(wrapped_url, "GET", location)
            d_status, d_headers, d_data = request(direct_url, method, path, body)
            # Date and Server are added by the server itself, per response. Both
            # bodies echo Host, whose port differs between the two servers, so
            # their lengths may differ (by a byte or so once gzipped, too).
            # The replay of a 200 adds its validators (resumable downloads).
            strip = {"Date", "Server", "Content-Length", "Accept-Ranges", "ETag"}
            assert dict(headers)["Content-Length"] == str(len(data))
            assert status == d_status
            assert [h for h in headers if h[0] not in strip] == [
                h for h in d_headers if h[0] not in strip
            ]
            if path == "/gzip":
                data, d_data = gzip.decompress(data), gzip.decompress(d_data)
            got, want = json.loads(data), json.loads(d_data)
            got["headers"].pop("Host"), want["headers"].pop("Host")
            got.pop("url", None), want.pop("url", None)
            assert got == want
