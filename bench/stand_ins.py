"""The stand-ins the in-process measurements share: an app that answers
"ok", a ``start_response`` that keeps nothing, and an executor that runs
each job on the submitting thread (the middleware's own work without the
hand-off to a pool thread). Imported by ``observability_cost`` only after
its process has decided which extras are installed.

And :func:`least`, served by scenarios 2 and 3 beside the middleware: the
least that any layer running an app on a pool of threads could do, so that
a figure can say how much of a gap is the hand-off itself."""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from asyncwsgi.executors import Executor

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from asyncwsgi.job import Job

__all__ = [
    "LEAST_STATUS",
    "Inline",
    "Kept",
    "call",
    "discard",
    "least",
    "noop_start_response",
    "trivial_app",
]


def trivial_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def discard(data: bytes) -> None:
    """The ``write`` callable PEP 3333 has ``start_response`` return."""


def noop_start_response(
    status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
) -> Callable[[bytes], object]:
    return discard


class Inline(Executor):
    """Runs each job before the submission is answered."""

    def submit(self, job: Job) -> None:
        assert self.runner is not None  # bound by the middleware
        self.runner.run(job)

    def shutdown(self, timeout: float | None = None) -> bool:
        return True


#: Where :func:`least` answers the polls of its tasks.
LEAST_STATUS = "/least/"

#: A response as :func:`call` returns it: status, headers, body.
Kept = tuple[str, list[tuple[str, str]], bytes]


class _Pending:
    """One task of :func:`least`: released once its response is kept."""

    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.response: Kept | None = None


def call(app: WSGIApplication, environ: WSGIEnvironment) -> Kept:
    """Call ``app`` as a server would: its status, headers and whole body
    (its iterable closed)."""
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        seen.append((status, headers))
        return discard

    body = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return (*seen[0], data)


def least(
    app: WSGIApplication, path: str, threads: int = 8, max_wait: float = 5.0
) -> WSGIApplication:
    """The least a task layer on a pool of threads could do: a request for
    ``path`` is handed to one of ``threads`` threads with a plain copy of its
    environ; that thread calls ``app`` and keeps the response in a dict.
    With ``Prefer`` (any value) the request waits for it, at most
    ``max_wait`` seconds; else (or later) it is answered 202 with a
    ``Location`` under :data:`LEAST_STATUS`, where a poll gets the response
    once, or 202 until then (waiting too, with ``Prefer``).

    Nothing is checked, bounded, stored elsewhere, timed or reported, and a
    request's body is not read: a stand-in for the benchmark, not a design.
    """
    jobs: queue.SimpleQueue[tuple[_Pending, WSGIEnvironment]] = queue.SimpleQueue()
    tasks: dict[str, _Pending] = {}

    def work() -> None:
        while True:
            pending, environ = jobs.get()
            pending.response = call(app, environ)
            pending.done.release()

    for _ in range(threads):
        threading.Thread(target=work, daemon=True).start()

    def answer(
        environ: WSGIEnvironment, start_response: StartResponse, task_id: str, pending: _Pending
    ) -> Iterable[bytes]:
        if "HTTP_PREFER" in environ and pending.done.acquire(timeout=max_wait):
            pending.done.release()
        response = pending.response
        if response is None:
            location = LEAST_STATUS + task_id
            start_response("202 Accepted", [("Location", location), ("Content-Length", "0")])
            return []
        del tasks[task_id]
        status, headers, data = response
        start_response(status, headers)
        return [data]

    def serve(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        asked = environ["PATH_INFO"]
        if asked.startswith(LEAST_STATUS):
            task_id = asked[len(LEAST_STATUS) :]
            pending = tasks.get(task_id)
            if pending is None:
                start_response("404 Not Found", [("Content-Length", "0")])
                return []
            return answer(environ, start_response, task_id, pending)
        if asked != path:
            return app(environ, start_response)
        task_id = secrets.token_urlsafe(24)
        pending = tasks[task_id] = _Pending()
        jobs.put((pending, dict(environ)))
        return answer(environ, start_response, task_id, pending)

    return serve
