"""Send a captured response again: byte for byte, streamed, resumable.

A ``200`` result carries ``Accept-Ranges: bytes`` and a strong ``ETag`` made
from the SHA-256 of its body (unless the app set its own ``ETag`` or
``Last-Modified``: the app's validators win), so that a client whose download
broke can ask for the rest (``Range``, with ``If-Range``). A request without
``Range`` gets the captured response exactly, plus those two headers, and
``Content-Length`` (the stored length) when the app framed its body neither
with it nor with ``Transfer-Encoding``.
A spooled body is streamed in chunks, through the server's
``wsgi.file_wrapper`` when it offers one and the body is a file (a server
that can use ``sendfile`` does).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING

from werkzeug.http import parse_date

from ..results import status_line
from ..task import Result
from .responses import text

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["BodyGone", "answer_result", "replay"]

_CHUNK = 256 * 1024

# One byte range (RFC 9110 14.1.2): first-last, first- or -suffix, digits only.
_RANGE_RE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)-([0-9]*)[ \t]*", re.IGNORECASE)


class _Unsatisfiable:
    """A marker: the range is valid but selects nothing of this body."""


_UNSATISFIABLE = _Unsatisfiable()


class BodyGone(Exception):
    """The result's body was removed (expired or deleted) between reading the
    record and opening the body."""


def etag_of(result: Result) -> str:
    body = result.body
    digest = hashlib.sha256(body).hexdigest() if isinstance(body, bytes) else body.sha256
    # 128 bits of the digest: as strong as a validator needs to be.
    return f'"{digest[:32]}"'


def replay(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    result: Result,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Iterable[bytes]:
    """Answer with ``result``; raises :class:`BodyGone` before anything was
    sent when the body no longer exists."""
    headers = list(result.headers)
    headers.extend(extra_headers)
    status = result.status
    size = result.size
    head = environ["REQUEST_METHOD"] == "HEAD"
    names = {name.lower(): value for name, value in headers}
    if _sized(status, names):
        # The stored length, said: a server would otherwise chunk a body the
        # app streamed without one, and a download would show no size (nor
        # could a cut connection be told from the end).
        headers.append(("Content-Length", str(size)))
    if not status.startswith("200 "):
        body_iter = [] if head else _body(environ, result, 0, size)
        start_response(status, headers)
        return body_iter

    accept = names.get("accept-ranges")
    if accept is None:
        headers.append(("Accept-Ranges", "bytes"))
    etag = names.get("etag")
    last_modified = names.get("last-modified")
    if etag is None and last_modified is None:
        etag = etag_of(result)
        headers.append(("ETag", etag))

    http_range = environ.get("HTTP_RANGE")
    if_range = environ.get("HTTP_IF_RANGE")
    if (
        http_range is not None
        and accept in (None, "bytes")
        and "content-range" not in names
        and (if_range is None or _same_body(if_range, etag, last_modified))
    ):
        span = byte_range(http_range, size)
        if isinstance(span, _Unsatisfiable):
            return _unsatisfiable(start_response, size, head)
        if span is not None:
            return _partial(environ, start_response, result, headers, span)
    body_iter = [] if head else _body(environ, result, 0, size)
    start_response(status, headers)
    return body_iter


def _partial(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    result: Result,
    headers: list[tuple[str, str]],
    span: tuple[int, int],
) -> Iterable[bytes]:
    """206: the bytes ``[start, stop)`` of the body."""
    start, stop = span
    headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    headers.append(("Content-Length", str(stop - start)))
    headers.append(("Content-Range", f"bytes {start}-{stop - 1}/{result.size}"))
    head = environ["REQUEST_METHOD"] == "HEAD"
    body_iter = [] if head else _body(environ, result, start, stop)
    start_response(status_line(206), headers)
    return body_iter


def _unsatisfiable(start_response: StartResponse, size: int, head: bool) -> Iterable[bytes]:
    """416: a range that selects nothing of the body."""
    body = b"the requested range is not satisfiable\n"
    start_response(
        status_line(416),
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Content-Range", f"bytes */{size}"),
        ],
    )
    return [] if head else [body]


def byte_range(header: str, size: int) -> tuple[int, int] | _Unsatisfiable | None:
    """The ``[start, stop)`` that a ``Range`` header selects from ``size``
    bytes; ``_UNSATISFIABLE`` for a valid range outside them (416); None for
    one to ignore (the whole body is sent, as RFC 9110 14.2 allows): not
    parsed, another unit, several ranges, or an empty body."""
    match = _RANGE_RE.fullmatch(header)
    if match is None or size == 0:
        return None
    first, last = (_int(digits) for digits in match.groups())
    if first is not None:
        if last is not None and last < first:
            return None  # invalid: first-pos after last-pos
        if first >= size:
            return _UNSATISFIABLE
        return first, size if last is None else min(last + 1, size)
    if last is None:
        return None  # "bytes=-"
    suffix = last
    if suffix == 0:
        return _UNSATISFIABLE
    # A suffix longer than the body selects all of it (RFC 9110 14.1.3).
    return max(0, size - suffix), size


def _int(digits: str) -> int | None:
    # Past 19 digits, a position is beyond any body: clamped, and int() is
    # spared the thousands of digits it refuses (Python's digit limit).
    return None if not digits else int(digits) if len(digits) <= 20 else 10**20


def _same_body(if_range: str, etag: str | None, last_modified: str | None) -> bool:
    """Whether ``If-Range`` names the body as it is now (RFC 9110 13.1.5):
    an entity tag by the strong comparison (a weak tag, given or ours, never
    matches), a date only if it is exactly the ``Last-Modified``."""
    value = if_range.strip()
    if value.startswith('"'):
        return etag is not None and not etag.startswith("W/") and value == etag.strip()
    if value.startswith("W/"):
        return False
    given = parse_date(value)
    return given is not None and last_modified is not None and given == parse_date(last_modified)


def _sized(status: str, names: dict[str, str]) -> bool:
    """Whether the replay should add ``Content-Length``: the status allows a
    body and the app framed it neither way (``Transfer-Encoding`` is not the
    app's to send under PEP 3333, but if it did, its framing is left alone).
    ``names``: the response's header names, lower-cased."""
    if status[:1] == "1" or status[:3] in ("204", "304"):
        return False
    return "content-length" not in names and "transfer-encoding" not in names


def _body(environ: WSGIEnvironment, result: Result, start: int, stop: int) -> Iterable[bytes]:
    body = result.body
    if isinstance(body, bytes):
        return [body[start:stop]] if (start, stop) != (0, len(body)) else [body]
    try:
        reader = body.open()
    except FileNotFoundError as exc:
        raise BodyGone(str(exc)) from exc
    try:
        if start:
            reader.seek(start)
        wrapper = environ.get("wsgi.file_wrapper")
        # A file wrapper sends to the end of the file (a server that honours
        # Content-Length stops there, but not every one does): used for the
        # ranges that end where the body does, which is every resumed download.
        if wrapper is not None and stop == body.size and _is_file(reader):
            chunks: Iterable[bytes] = wrapper(reader, _CHUNK)
            return chunks
    except BaseException:
        reader.close()
        raise
    reader.close()
    return body.chunks(start, stop)


def _is_file(reader: IO[bytes]) -> bool:
    try:
        reader.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def answer_result(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    result: Result,
    applied: str = "",
    extra: list[tuple[str, str]] | None = None,
) -> Iterable[bytes]:
    """A finished task's answer, as a status URL (or a submission that waited)
    gives it: the result replayed, with ``Preference-Applied`` when a wait
    was; 410 when its body went away before it could be opened."""
    headers = list(extra or [])
    if applied:
        headers += [("Preference-Applied", applied), ("Vary", "Prefer")]
    try:
        return replay(environ, start_response, result, headers)
    except BodyGone:
        return text(410, "this task's result has expired")(environ, start_response)
