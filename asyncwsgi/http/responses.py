"""The middleware's own small answers: plain text with a status, shared by
every part of the HTTP side so that each says a thing the same way."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from .. import metrics
from ..results import status_line

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "gone",
    "http_error",
    "method_not_allowed",
    "no_content",
    "not_found",
    "text",
    "unavailable",
]


def text(code: int, message: str) -> Response:
    # The standard reason phrase: werkzeug's status strings are upper case
    # (``404 NOT FOUND``).
    return Response(
        message + "\n", status=status_line(code), content_type="text/plain; charset=utf-8"
    )


def http_error(exc: HTTPException) -> Response:
    """werkzeug's answer to one of its HTTP exceptions, with a standard status line."""
    response = exc.get_response()
    # (werkzeug 3.0 annotates the sans-I/O base class; the object is the WSGI one.)
    assert isinstance(response, Response)
    response.status = status_line(response.status_code)
    return response


def no_content(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """204: no body, so no Content-Type either (PEP 3333's validator, and
    RFC 9110, refuse content metadata on a response that has no content)."""
    start_response(status_line(204), [])
    return []


def not_found(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    return text(404, "no such task")(environ, start_response)


def gone(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if metrics.INSTRUMENTS is not None:
        metrics.INSTRUMENTS.expired.inc()
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
