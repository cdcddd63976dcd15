"""Shared test helpers: polling through a werkzeug test client, a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import make_server
from werkzeug.test import Client, TestResponse


def wait_done(client: Client, location: str, timeout: float = 10.0, **kw: Any) -> TestResponse:
    """Poll a status URL until it answers the task's result.

    The middleware's own 202 always points ``Location`` at the status URL; a
    202 without that is the app's result (an app may answer 202 itself).
    """
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(location, **kw)
        if response.status_code != 202 or not response.headers.get("Location", "").endswith(
            location
        ):
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"task at {location} still 202 after {timeout}s")
        time.sleep(0.005)


@contextmanager
def serving(app: Any, threaded: bool = True) -> Iterator[str]:
    """Serve ``app`` with werkzeug's server on 127.0.0.1 and a free port."""
    server = make_server("127.0.0.1", 0, app, threaded=threaded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def captured_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers of a replayed response without those the replay of a 200
    adds after the captured ones (``Accept-Ranges: bytes``, then ``ETag``
    unless the app set validators): what the app itself answered."""
    headers = list(headers)
    if len(headers) >= 2 and headers[-1][0] == "ETag" and headers[-2] == _RANGES:
        del headers[-2:]
    elif headers and headers[-1] == _RANGES:
        del headers[-1]  # the app set its own validators
    return headers


_RANGES = ("Accept-Ranges", "bytes")
