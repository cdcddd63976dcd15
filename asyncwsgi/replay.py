"""Send a captured response again: byte for byte, streamed, resumable.

A ``200`` result carries ``Accept-Ranges: bytes`` and a strong ``ETag`` made
from the SHA-256 of its body (unless the app set its own ``ETag`` or
``Last-Modified``: the app's validators win), so that a client whose download
broke can ask for the rest (``Range``, with ``If-Range``). A request without
``Range`` gets the captured response exactly, plus those two headers.
A spooled body is streamed in chunks, through the server's
``wsgi.file_wrapper`` when it offers one and the body is a file (a server
that can use ``sendfile`` does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING

from werkzeug.datastructures import ContentRange
from werkzeug.http import parse_range_header
from werkzeug.sansio.http import is_resource_modified

from .task import Result

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["BodyGone", "replay"]

_CHUNK = 256 * 1024


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
    if not status.startswith("200 "):
        body_iter = [] if head else _body(environ, result, 0, size)
        start_response(status, headers)
        return body_iter

    names = {name.lower(): value for name, value in headers}
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
        and (
            # If-Range: the range only if the body is still the one the
            # client has (the same strong ETag, or Last-Modified); else all.
            if_range is None
            or not is_resource_modified(
                http_range=http_range,
                http_if_range=if_range,
                etag=etag,
                last_modified=last_modified,
                ignore_if_range=False,
            )
        )
    ):
        ranges = parse_range_header(http_range)
        # A Range that cannot be parsed, or of several parts, is ignored (the
        # whole body is sent), as RFC 9110 allows.
        if ranges is not None and ranges.units == "bytes" and len(ranges.ranges) == 1:
            span = ranges.range_for_length(size)
            if span is None:
                body = b"the requested range is not satisfiable\n"
                start_response(
                    "416 Range Not Satisfiable",
                    [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("Content-Length", str(len(body))),
                        ("Content-Range", f"bytes */{size}"),
                    ],
                )
                return [] if head else [body]
            start, stop = span
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            headers.append(("Content-Length", str(stop - start)))
            headers.append(("Content-Range", ContentRange("bytes", start, stop, size).to_header()))
            body_iter = [] if head else _body(environ, result, start, stop)
            start_response("206 Partial Content", headers)
            return body_iter
    body_iter = [] if head else _body(environ, result, 0, size)
    start_response(status, headers)
    return body_iter


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
