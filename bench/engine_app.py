"""The app every engine of the engine benchmark runs: small to import, as an
RQ work horse imports it for every job."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def work(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Burn ``cpu_ms`` (query string) of CPU, then answer."""
    cpu_ms = float(environ.get("QUERY_STRING", "") or 20)
    end = time.thread_time() + cpu_ms / 1000
    n = 0
    while time.thread_time() < end:
        n += 1
    body = f"{os.getpid()} {n}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
