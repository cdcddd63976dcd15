"""A 202 document describes a queued or running task, never a finished one,
however fast the task finishes (stores hand out snapshots, not live records)."""

from __future__ import annotations

from typing import Any

from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.executors import Executor
from asyncwsgi.job import Job


class Inline(Executor):
    """Runs each task before the submission is answered: the fastest a
    worker can ever be."""

    def submit(self, job: Job) -> None:
        assert self.runner is not None
        self.runner.run(job)

    def shutdown(self, timeout: float | None = None) -> bool:
        return True


def instant(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]


def test_a_202_never_says_done() -> None:
    middleware = AsyncMiddleware(instant, paths=["/work/*"], executor=Inline())
    try:
        response = Client(middleware).post("/work/1")
        assert response.status_code == 202
        assert response.json["state"] == "queued"
    finally:
        assert middleware.close(10)
