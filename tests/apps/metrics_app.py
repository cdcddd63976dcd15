"""An app with metrics on, for multi-process servers (tests/test_metrics.py).

The store URL comes from ``ASYNCWSGI_TEST_STORE``. ``/work/fail`` raises,
``/work/hold`` runs until its task is cancelled (20 s at most), any other
``/work/...`` answers at once; ``/busy?<seconds>`` (not a task) keeps the
worker that takes it busy that long. Every response names the process that
answered it in ``X-Worker-Pid``, the scrapes of ``/metrics`` included.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from asyncwsgi import AsyncMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    task = environ.get("asyncwsgi.task")
    if path == "/busy":  # not a task: keeps this worker busy, so others answer
        time.sleep(float(environ.get("QUERY_STRING") or "0.3"))
    if path == "/work/fail":
        raise RuntimeError("this task fails on purpose")
    if path == "/work/hold" and task is not None:
        deadline = time.monotonic() + 20
        while not task.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


middleware = AsyncMiddleware(
    inner,
    paths=["/work/*"],
    store=os.environ["ASYNCWSGI_TEST_STORE"],
    metrics_path="/metrics",
    max_body=1024,
)


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    def named(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

    return middleware(environ, named)
