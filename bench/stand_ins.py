"""The stand-ins the in-process measurements share: an app that answers
"ok", a ``start_response`` that keeps nothing, and an executor that runs
each job on the submitting thread (the middleware's own work without the
hand-off to a pool thread). Imported by ``observability_cost`` only after
its process has decided which extras are installed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from asyncwsgi.executors import Executor

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from asyncwsgi.job import Job

__all__ = ["Inline", "discard", "noop_start_response", "trivial_app"]


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
