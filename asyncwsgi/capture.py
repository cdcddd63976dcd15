"""Call a WSGI application the way a careful server does, and keep its response.

The body is spooled: kept in memory up to a threshold, then written to the
store (a file, chunks in Redis) as the app produces it, so that a response of
any size is never held whole by the process.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .stores.base import StoreFull
from .task import Body, BodySink, Result

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

__all__ = ["ResponseTooLarge", "Spool", "TaskEnded", "capture"]


class ResponseTooLarge(Exception):
    """The app's response passed ``max_result``; the task fails."""


class TaskEnded(Exception):
    """The task ended while its app was still answering (past its timeout,
    deleted): the capture stops at the next chunk and its iterable is closed."""


class Spool:
    """A body written in pieces: in memory up to ``threshold`` bytes, then in
    the sink ``open_sink`` gives (the memory part moved there first). Its
    size and SHA-256 are counted as it grows; past ``limit`` bytes a write
    raises ``too_large``.

    The owner ends it with :meth:`close` (the store took the body) or
    :meth:`discard` (it did not): until then a spooled body is the writer's.
    Once :attr:`ended` is set (by another thread: the task ended meanwhile),
    the next write raises :class:`TaskEnded`.
    """

    __slots__ = (
        "ended",
        "threshold",
        "limit",
        "too_large",
        "size",
        "_open_sink",
        "_chunks",
        "_hash",
        "sink",
    )

    def __init__(
        self,
        threshold: int,
        open_sink: Callable[[], BodySink] | None,
        *,
        limit: int | None = None,
        too_large: Callable[[int], Exception] | None = None,
    ) -> None:
        self.threshold = threshold
        self.limit = limit
        self.too_large = too_large
        self.size = 0
        self._open_sink = open_sink
        self._chunks: list[bytes] = []
        # Counted from the moment the body goes to a sink; a body kept in
        # memory is hashed only if someone asks (most never are).
        self._hash: Any = None
        self.sink: BodySink | None = None
        self.ended = False

    def write(self, data: bytes) -> None:
        if self.ended:
            raise TaskEnded("the task ended while its app was answering")
        size = self.size + len(data)
        if self.limit is not None and size > self.limit:
            raise (self.too_large or _too_large)(self.limit)
        self.size = size
        sink = self.sink
        try:
            if sink is None:
                if size <= self.threshold or self._open_sink is None:
                    self._chunks.append(data)
                    return
                sink = self.sink = self._open_sink()
                chunks, self._chunks = self._chunks, []
                self._hash = hashlib.sha256()
                for chunk in chunks:
                    self._hash.update(chunk)
                    sink.write(chunk)
            self._hash.update(data)
            sink.write(data)
        except OSError as exc:
            # A full disk (or quota) under the store: the same fault as a
            # spent budget for whoever wrote this body.
            raise StoreFull(f"no room to store the body: {exc.strerror or exc}") from exc

    def result(self) -> bytes | Body:
        """The whole body: bytes when it stayed in memory, else the sink's
        committed :class:`Body`."""
        if self.sink is None:
            return b"".join(self._chunks)
        try:
            return self.sink.commit(self.size, self.sha256)
        except OSError as exc:
            raise StoreFull(f"no room to store the body: {exc.strerror or exc}") from exc

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of what was written (before :meth:`close`)."""
        if self._hash is None:
            return hashlib.sha256(b"".join(self._chunks)).hexdigest()
        return str(self._hash.hexdigest())

    def close(self) -> None:
        self._chunks = []
        if self.sink is not None:
            self.sink.close()

    def discard(self) -> None:
        self._chunks = []
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.discard()


def _too_large(limit: int) -> Exception:
    # ``limit`` is what was left for the body: the message names max_result.
    return ResponseTooLarge("the status line, headers and body exceed max_result")


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


class _Response:
    """What one call of the app has answered so far: its ``start_response``
    and the ``write`` it returns, which is also where the iterable's chunks
    go."""

    __slots__ = ("spool", "max_result", "status", "headers")

    def __init__(self, spool: Spool, max_result: int | None) -> None:
        self.spool = spool
        self.max_result = max_result
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            if not isinstance(data, bytes):
                raise ProtocolError(f"body chunks must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if not data:
            return
        if self.status is None:
            raise ProtocolError("body produced before start_response")
        self.spool.write(data)

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
        /,
    ) -> Callable[[bytes], object]:
        spool = self.spool
        if exc_info is not None and exc_info[1] is not None:
            try:
                if spool.size:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
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
        max_result = self.max_result
        if max_result is not None:
            if length + spool.size > max_result:
                raise (spool.too_large or _too_large)(max_result)
            # The body may have what the status line and headers leave.
            spool.limit = max_result - length
        self.status, self.headers = status, checked
        return self.write


def capture(
    app: WSGIApplication,
    environ: WSGIEnvironment,
    max_result: int | None = None,
    *,
    spool: Spool | None = None,
) -> Result:
    """Run ``app`` and return its status, headers (in order, duplicates kept)
    and body.

    The body is everything passed to ``write()`` and every chunk of the
    iterable, written to ``spool`` as it comes (by default one in memory);
    the iterable's ``close()`` runs exactly once, also when the app fails.
    Headers count as sent once a non-empty chunk has been produced, so
    ``start_response(..., exc_info)`` after that re-raises, as a server would.
    Any exception propagates to the caller, which turns it into a 500 (and
    discards the spool).

    ``max_result`` (by default the spool's ``limit``) bounds what is stored:
    the status line, the headers (as ``name: value`` lines) and the body
    together.
    """
    if spool is None:
        spool = Spool(0, None, limit=max_result)
    elif max_result is None:
        max_result = spool.limit
    response = _Response(spool, max_result)
    iterable: Iterable[bytes] = app(environ, response.start_response)
    try:
        write = response.write
        for chunk in iterable:
            write(chunk)
        if response.status is None:
            raise ProtocolError("the app returned without calling start_response")
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    return Result(response.status, response.headers, spool.result())
