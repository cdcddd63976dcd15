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


def _check_header(name: Any, value: Any) -> tuple[str, str]:
    """The header as plain ``str`` values. Subclasses of ``str`` (markupsafe's
    ``Markup``, common in Jinja apps) are accepted, as waitress and werkzeug's
    servers accept them, and stored as the plain strings they are."""
    if not isinstance(name, str) or not isinstance(value, str):
        raise ProtocolError(f"header names and values must be str: {name!r}: {value!r}")
    if _NAME.fullmatch(name) is None:
        raise ProtocolError(f"invalid header name {name!r}")
    if _VALUE.fullmatch(value) is None:
        raise ProtocolError(f"invalid value of header {name!r}")
    if type(name) is not str:
        name = str.__str__(name)
    if type(value) is not str:
        value = str.__str__(value)
    return name, value


def _check_status(status: Any) -> str:
    if (
        not isinstance(status, str)
        or len(status) < 4
        or not status[:3].isdigit()
        or status[3] != " "
    ):
        raise ProtocolError(f"invalid status line {status!r}")
    if "\r" in status or "\n" in status:
        raise ProtocolError("status line with CR/LF")
    return status if type(status) is str else str.__str__(status)


def capture(app: WSGIApplication, environ: WSGIEnvironment, max_result: int) -> Result:
    """Run ``app`` and return its status, headers (in order, duplicates kept)
    and body.

    The body is everything passed to ``write()`` and every chunk of the
    iterable; the iterable's ``close()`` runs exactly once, also when the app
    fails. Headers count as sent once a non-empty chunk has been produced, so
    ``start_response(..., exc_info)`` after that re-raises, as a server would.
    Any exception propagates to the caller, which turns it into a 500.

    ``max_result`` bounds what is stored: the status line, the headers (as
    ``name: value`` lines) and the body together.
    """
    response: list[Any] = []  # [status, headers] once start_response is called
    chunks: list[bytes] = []
    head = 0  # bytes of the status line and headers
    size = 0  # bytes of the body

    def add(data: bytes) -> None:
        nonlocal size
        if type(data) is not bytes:
            if not isinstance(data, bytes):
                raise ProtocolError(f"body chunks must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if not data:
            return
        if not response:
            raise ProtocolError("body produced before start_response")
        size += len(data)
        if head + size > max_result:
            raise ResponseTooLarge(f"response exceeds max_result ({max_result} bytes)")
        chunks.append(data)

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        nonlocal head
        if exc_info is not None and exc_info[1] is not None:
            try:
                if chunks:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif response:
            raise ProtocolError("start_response called twice without exc_info")
        status = _check_status(status)
        if type(headers) is not list:
            raise ProtocolError("headers must be a list")
        checked: list[tuple[str, str]] = []
        length = len(status)
        for header in headers:
            if type(header) is not tuple or len(header) != 2:
                raise ProtocolError(f"a header must be a (name, value) tuple: {header!r}")
            name, value = _check_header(*header)
            checked.append((name, value))
            length += len(name) + len(value) + 4  # ": " and CRLF
        if length + size > max_result:
            raise ResponseTooLarge(f"response exceeds max_result ({max_result} bytes)")
        head = length
        response[:] = [status, checked]
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
