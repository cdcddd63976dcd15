"""The responses a task ends with when the app could not give one."""

from __future__ import annotations

from .task import Result

__all__ = ["error_result", "lost_result"]

_REASONS = {
    500: "Internal Server Error",
    504: "Gateway Timeout",
}


def error_result(code: int = 500, message: str | None = None) -> Result:
    """A plain-text error with no detail of the cause: tracebacks go to the
    log, never to the client."""
    reason = _REASONS.get(code, "Error")
    body = (message or reason).encode("utf-8") + b"\n"
    return Result(
        f"{code} {reason}",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        body,
    )


def lost_result() -> Result:
    return error_result(500, "the worker running this task was lost")
