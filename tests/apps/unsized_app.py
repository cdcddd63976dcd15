"""Responses of a known size sent without ``Content-Length``, for the replay
tests: ``/unsized/<n>`` yields ``n`` bytes in chunks of 64 KiB and says
nothing of their length; ``/empty`` answers 204. ``application`` spools
bodies above 64 KiB to the store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from asyncwsgi import AsyncMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

CHUNK = 64 * 1024


def _chunks(size: int) -> Iterator[bytes]:
    for start in range(0, size, CHUNK):
        yield bytes([start // CHUNK % 251]) * min(CHUNK, size - start)


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/unsized/empty":
        start_response("204 No Content", [])
        return []
    size = int(environ["PATH_INFO"].rsplit("/", 1)[1])
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _chunks(size)


application = AsyncMiddleware(app, paths=["/unsized/*"], spool_threshold=CHUNK)
