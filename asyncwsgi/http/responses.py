"""The middleware's own small answers: plain text with a status, shared by
every part of the HTTP side so that each says a thing the same way."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.wrappers import Response

from ..metrics import INSTRUMENTS

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["gone", "method_not_allowed", "not_found", "text", "unavailable"]


def text(code: int, message: str) -> Response:
    return Response(message + "\n", status=code, content_type="text/plain; charset=utf-8")


def not_found(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    return text(404, "no such task")(environ, start_response)


def gone(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if INSTRUMENTS is not None:
        INSTRUMENTS.expired.inc()
    return text(410, "this task's result has expired")(environ, start_response)


def unavailable(message: str, retry_after: int) -> Response:
    """503 with ``Retry-After``: the store is down or full, or no new tasks."""
    response = text(503, message)
    response.headers["Retry-After"] = str(retry_after)
    return response


def method_not_allowed(message: str, allow: str) -> Response:
    response = text(405, message)
    response.headers["Allow"] = allow
    return response
