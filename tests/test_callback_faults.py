"""Completion callbacks against hostile input and hostile receivers, through
real servers and real stores: Callback-URL forms a receiver could read
outside the allowed prefix, and receivers that answer one byte a second."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncwsgi.middleware import CALLBACK_HEADER
from tests.servers import wsgi_server
from tests.test_callbacks import SECRET, Receiver, receiving


def _post(port: int, path: str, callback: bytes | str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        # Bytes as they are: a str would be encoded as latin-1 by http.client.
        conn.putheader("Callback-URL", callback)
        conn.putheader("Content-Length", "0")
        conn.putheader("Connection", "close")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: Any) -> Iterator[tuple[int, str, Receiver]]:
    """gunicorn (gthread) serving tests.apps.hostile_app on SQLite with
    callbacks allowed under a real receiver's /hooks/."""
    receiver = Receiver()
    tmp = Path(tmp_path_factory.mktemp("callback-forms"))
    with receiving(receiver) as hooks:
        env = {
            "ASYNCWSGI_TEST_STORE": "sqlite:///" + str(tmp / "tasks.db"),
            "ASYNCWSGI_TEST_CALLBACK_ALLOW": hooks,
            "ASYNCWSGI_TEST_CALLBACK_SECRET": SECRET,
        }
        app = "tests.apps.hostile_app:application"
        with wsgi_server("gunicorn-gthread", app, tmp / "log", env) as port:
            yield port, hooks, receiver


REFUSED = [
    pytest.param("x\\..\\..\\admin", id="backslashes"),
    pytest.param("x\\admin", id="one-backslash"),
    pytest.param("x%5c..%5cadmin", id="encoded-backslashes"),
    pytest.param("x%5C..%5Cadmin", id="encoded-backslashes-upper"),
    pytest.param("%2e%2e/admin", id="encoded-dots"),
    pytest.param(".%2E/admin", id="half-encoded-dots"),
    pytest.param("%2E%2e/admin", id="mixed-case-dots"),
    pytest.param("%252e%252e/admin", id="double-encoded-dots"),
    pytest.param("x/%2e/y", id="encoded-single-dot"),
    pytest.param("x/..;/admin", id="dots-with-a-parameter"),
    pytest.param("x%2f..%2fadmin", id="encoded-slashes"),
    pytest.param("café", id="non-ascii-latin-1"),
    pytest.param("café".encode(), id="non-ascii-utf-8"),
    pytest.param("x\t/../admin", id="tab"),
]


@pytest.mark.parametrize("tail", REFUSED)
def test_a_callback_url_a_receiver_may_read_elsewhere_is_400(
    hooked: tuple[int, str, Receiver], tail: str | bytes
) -> None:
    port, hooks, receiver = hooked
    url = hooks.encode("latin-1") + tail if isinstance(tail, bytes) else hooks + tail
    status, headers, body = _post(port, "/work/x", url)
    assert status == 400, body
    assert CALLBACK_HEADER not in headers
    assert b"Callback-URL" in body


def test_percent_encoded_non_ascii_is_delivered_as_sent(
    hooked: tuple[int, str, Receiver],
) -> None:
    port, hooks, receiver = hooked
    url = hooks + "caf%C3%A9?q=%E2%9C%93"
    status, headers, _ = _post(port, "/work/x", url)
    assert status == 202 and headers[CALLBACK_HEADER] == url
    deadline = time.monotonic() + 20
    while not any(d.path == "/hooks/caf%C3%A9?q=%E2%9C%93" for d in receiver.deliveries):
        assert time.monotonic() < deadline, [d.path for d in receiver.deliveries]
        time.sleep(0.05)
    # Nothing refused above reached the receiver: every delivery is under /hooks/.
    assert all(d.path.startswith("/hooks/") for d in receiver.deliveries)
