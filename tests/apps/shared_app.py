"""An app behind AsyncMiddleware with a shared store, for multi-process servers.

The store URL comes from ``ASYNCWSGI_TEST_STORE``, the lease (seconds) from
``ASYNCWSGI_TEST_LEASE``, ``max_pending`` from ``ASYNCWSGI_TEST_MAX_PENDING``.
``/work/<anything>`` answers ``<path>|<query>|<body>``
with the pid of the worker that ran it in ``X-Worker-Pid``. ``/work/slow``
first reports that pid as its progress message, then sleeps ``seconds`` (from
the query string); any other path first sleeps ``ms`` milliseconds if the
query string has them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from asyncwsgi import AsyncMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    task = environ.get("asyncwsgi.task")
    if path == "/work/slow":
        if task is not None:
            task.set_progress(0, None, f"pid={os.getpid()}")
        seconds = float(parse_qs(query).get("seconds", ["1"])[0])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
    elif "ms" in parse_qs(query):
        time.sleep(float(parse_qs(query)["ms"][0]) / 1000)
    out = f"{path}|{query}|".encode() + body
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(out))),
            ("X-Worker-Pid", str(os.getpid())),
        ],
    )
    return [out]


application = AsyncMiddleware(
    inner,
    paths=["/work/*"],
    store=os.environ["ASYNCWSGI_TEST_STORE"],
    lease=float(os.environ.get("ASYNCWSGI_TEST_LEASE", "30")),
    max_pending=int(os.environ.get("ASYNCWSGI_TEST_MAX_PENDING", "1000")),
)
