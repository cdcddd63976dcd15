"""Call a WSGI application the way a careful server does, and keep its response."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .task import Result

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

__all__ = ["ResponseTooLarge", "capture"]


class ResponseTooLarge(Exception):
    """The app's response passed ``max_result``; the task fails."""


class ProtocolError(Exception):
    """The app broke PEP 3333 in a way a server would refuse."""


# A header name is ASCII without CR, LF or ':'; a value is latin-1 without
# CR or LF. One regex each: the check runs for every header of every task.
_NAME = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x39\x3b-\x7f]+")
_VALUE = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\xff]*")


def _check_header(name: Any, value: Any) -> None:
    if type(name) is not str or type(value) is not str:
        raise ProtocolError(f"header names and values must be str: {name!r}: {value!r}")
    if _NAME.fullmatch(name) is None:
        raise ProtocolError(f"invalid header name {name!r}")
    if _VALUE.fullmatch(value) is None:
        raise ProtocolError(f"invalid value of header {name!r}")


def _check_status(status: Any) -> None:
    if type(status) is not str or len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
        raise ProtocolError(f"invalid status line {status!r}")
    if "\r" in status or "\n" in status:
        raise ProtocolError("status line with CR/LF")


def capture(app: WSGIApplication, environ: WSGIEnvironment, max_result: int) -> Result:
    """Run ``app`` and return its status, headers (in order, duplicates kept)
    and body.

    The body is everything passed to ``write()`` and every chunk of the
    iterable; the iterable's ``close()`` runs exactly once, also when the app
    fails. Headers count as sent once a non-empty chunk has been produced, so
    ``start_response(..., exc_info)`` after that re-raises, as a server would.
    Any exception propagates to the caller, which turns it into a 500.
    """
    response: list[Any] = []  # [status, headers] once start_response is called
    chunks: list[bytes] = []
    size = 0

    def add(data: bytes) -> None:
        nonlocal size
        if type(data) is not bytes:
            raise ProtocolError(f"body chunks must be bytes, not {type(data).__name__}")
        if not data:
            return
        if not response:
            raise ProtocolError("body produced before start_response")
        size += len(data)
        if size > max_result:
            raise ResponseTooLarge(f"response body exceeds max_result ({max_result} bytes)")
        chunks.append(data)

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        if exc_info is not None and exc_info[1] is not None:
            try:
                if chunks:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif response:
            raise ProtocolError("start_response called twice without exc_info")
        _check_status(status)
        if type(headers) is not list:
            raise ProtocolError("headers must be a list")
        for header in headers:
            if type(header) is not tuple or len(header) != 2:
                raise ProtocolError(f"a header must be a (name, value) tuple: {header!r}")
            _check_header(*header)
        response[:] = [status, list(headers)]
        return add

    iterable: Iterable[bytes] = app(environ, start_response)
    try:
        for chunk in iterable:
            add(chunk)
        if not response:
            raise ProtocolError("the app returned without calling start_response")
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    return Result(response[0], response[1], b"".join(chunks))
