"""An app for the push tests under real servers (gunicorn with several workers).

Configured from the environment: ``ASYNCWSGI_TEST_STORE`` (store URL),
``ASYNCWSGI_TEST_MAX_WAIT`` (seconds), ``ASYNCWSGI_TEST_CALLBACK_ALLOW``
(space-separated prefixes) and ``ASYNCWSGI_TEST_CALLBACK_SECRET``. Tasks are
bound to the ``X-User`` header when ``ASYNCWSGI_TEST_OWNER`` is set.

``/work/steps?n=N&ms=M`` reports progress N times, M milliseconds apart, then
answers its pid. Every response of the server carries ``X-Pid``, the pid of
the worker process that served it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from asyncwsgi import AsyncMiddleware
from asyncwsgi.owner import by_header

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    steps = int(query.get("n", ["0"])[0])
    pause = float(query.get("ms", ["0"])[0]) / 1000
    task = environ.get("asyncwsgi.task")
    for step in range(steps):
        if task is not None:
            task.set_progress(step + 1, steps, f"pid={os.getpid()}")
        time.sleep(pause)
    body = f"ran in {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {
        "paths": ["/work/*"],
        "store": os.environ["ASYNCWSGI_TEST_STORE"],
        "max_wait": float(os.environ.get("ASYNCWSGI_TEST_MAX_WAIT", "10")),
    }
    allow = os.environ.get("ASYNCWSGI_TEST_CALLBACK_ALLOW")
    if allow:
        options["callback_allow"] = allow.split()
        options["callback_secret"] = os.environ["ASYNCWSGI_TEST_CALLBACK_SECRET"]
    if os.environ.get("ASYNCWSGI_TEST_OWNER"):
        options["owner"] = by_header("X-User")
    return options


middleware = AsyncMiddleware(inner, **_options())


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    def with_pid(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, ("X-Pid", str(os.getpid()))], exc_info)

    return middleware(environ, with_pid)
