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
