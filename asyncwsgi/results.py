"""The responses a task ends with when the app could not give one."""

from __future__ import annotations

from http import HTTPStatus

from .task import Result

__all__ = [
    "error_result",
    "lost_result",
    "status_line",
    "store_full_result",
    "too_large_result",
]


def status_line(code: int) -> str:
    """``"503 Service Unavailable"``: the code with its standard reason phrase."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


def error_result(code: int = 500, message: str | None = None) -> Result:
    """A plain-text error with no detail of the cause: tracebacks go to the
    log, never to the client."""
    status = status_line(code)
    body = (message or status[4:]).encode("utf-8") + b"\n"
    return Result(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        body,
    )


def lost_result(state: str = "running") -> Result:
    """What a task whose lease lapsed ends with: a queued one was never
    started (503: it never ran, so sending it again is safe), a running one
    lost its worker (500: it may have run in part)."""
    if state == "queued":
        return error_result(503, "the task was not started in time")
    return error_result(500, "the worker running this task was lost")


def too_large_result(max_result: int) -> Result:
    return error_result(
        500,
        f"the result was too large: its status line, headers and body passed max_result "
        f"({max_result} bytes)",
    )


def store_full_result(reason: str) -> Result:
    """The app answered but its response could not be kept (the store's byte
    budget is spent, or its disk is full). A 500, not a 503: a 503 with
    Retry-After on a status URL would have clients poll again for a result
    that will never come."""
    return error_result(500, f"the result could not be stored: {reason}")
