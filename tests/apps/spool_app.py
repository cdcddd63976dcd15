"""An app whose results spool slowly, behind AsyncMiddleware with a byte budget,
for the tests of what happens to a writer that dies or is cancelled mid-spool.

Configured from the environment: ``ASYNCWSGI_TEST_STORE`` (a store URL),
``ASYNCWSGI_TEST_LEASE`` (seconds), ``ASYNCWSGI_TEST_TIMEOUT`` (seconds, none
by default), ``ASYNCWSGI_TEST_RESULTS_DIR``, and the callback options
``ASYNCWSGI_TEST_CALLBACK_ALLOW`` / ``ASYNCWSGI_TEST_CALLBACK_SECRET``.
``max_result`` is :data:`MAX_RESULT`, ``spool_threshold`` :data:`THRESHOLD`,
and ``max_stored_bytes`` ``ASYNCWSGI_TEST_BUDGETS`` times ``max_result``
(1 by default: one writer's reservation spends the whole budget).

``/work/spool?chunks=N&ms=M`` yields N chunks of :data:`CHUNK` bytes, M
milliseconds apart; once its body has passed the threshold (so its writer
holds its reservation) it reports ``spooling pid=<its pid>`` as progress.
Its iterable's ``close()`` writes the time it ran to the file named by the
task's id in ``ASYNCWSGI_TEST_MARKS`` (a directory), when that is set. Any
other path answers ``<path>`` at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from asyncwsgi import AsyncMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

CHUNK = 64 * 1024
THRESHOLD = 2 * CHUNK
MAX_RESULT = 2**20


class Stream:
    """The slow body, with a ``close()`` that says it ran."""

    def __init__(self, task: Any, chunks: int, pause: float) -> None:
        self.task = task
        self.chunks = chunks
        self.pause = pause

    def __iter__(self) -> Iterator[bytes]:
        for index in range(self.chunks):
            if index * CHUNK > THRESHOLD and self.task is not None:
                self.task.set_progress(index, self.chunks, f"spooling pid={os.getpid()}")
            yield bytes([index % 251]) * CHUNK
            time.sleep(self.pause)

    def close(self) -> None:
        marks = os.environ.get("ASYNCWSGI_TEST_MARKS")
        if marks and self.task is not None:
            with open(os.path.join(marks, self.task.id), "w") as mark:
                mark.write(repr(time.time()))


def inner(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
    path = environ.get("PATH_INFO", "")
    if path == "/work/spool":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        chunks = int(query.get("chunks", ["8"])[0])
        pause = float(query.get("ms", ["0"])[0]) / 1000
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Stream(environ.get("asyncwsgi.task"), chunks, pause)
    body = path.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _options() -> dict[str, Any]:
    options: dict[str, Any] = {
        "paths": ["/work/*"],
        "store": os.environ["ASYNCWSGI_TEST_STORE"],
        "lease": float(os.environ.get("ASYNCWSGI_TEST_LEASE", "30")),
        "max_result": MAX_RESULT,
        "spool_threshold": THRESHOLD,
        "max_stored_bytes": MAX_RESULT * int(os.environ.get("ASYNCWSGI_TEST_BUDGETS", "1")),
    }
    if os.environ.get("ASYNCWSGI_TEST_TIMEOUT"):
        options["timeout"] = float(os.environ["ASYNCWSGI_TEST_TIMEOUT"])
    if os.environ.get("ASYNCWSGI_TEST_RESULTS_DIR"):
        options["results_dir"] = os.environ["ASYNCWSGI_TEST_RESULTS_DIR"]
    allow = os.environ.get("ASYNCWSGI_TEST_CALLBACK_ALLOW")
    if allow:
        options["callback_allow"] = allow.split()
        options["callback_secret"] = os.environ["ASYNCWSGI_TEST_CALLBACK_SECRET"]
    return options


application = AsyncMiddleware(inner, **_options())
