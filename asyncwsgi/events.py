"""Server-Sent Events on a status URL: a task's progress as it changes, then ``done``.

``GET`` on a status URL with ``Accept: text/event-stream`` answers
``200 text/event-stream``::

    retry: 1000

    id: 3f0c9a1b7d2e4c55
    event: progress
    data: {"id": "...", "state": "running", ..., "progress": {"done": 3, ...}}

    id: done
    event: done
    data: {"status": 200, "location": "/status/..."}

Each event's ``id`` is derived from what it shows, so a client reconnecting
with ``Last-Event-ID`` is not sent again what it saw; one that saw ``done``
gets ``204 No Content``, which tells an ``EventSource`` to stop reconnecting.
A stream ends when the task does, or after ``max_wait`` seconds (the client
reconnects), so that no server thread is held without bound.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from .stores.base import Store, StoreUnavailable, changed
from .task import TaskRecord

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["DONE_ID", "EventStream", "event_id", "wants_events"]

logger = logging.getLogger("asyncwsgi")

DONE_ID = "done"
_MEDIA_TYPE = "text/event-stream"
# A comment line this often on a quiet stream: proxies keep the connection
# open, and a client that went away is noticed at the next write.
_KEEPALIVE = 15.0


def wants_events(environ: WSGIEnvironment) -> bool:
    """Whether the request asks for ``text/event-stream`` by name (a ``*/*``
    does not: a plain poll stays a poll)."""
    header = environ.get("HTTP_ACCEPT")
    if not header or _MEDIA_TYPE not in header:
        return False
    accept = parse_accept_header(header, MIMEAccept)
    return any(value == _MEDIA_TYPE and quality > 0 for value, quality in accept)


def event_id(document: bytes) -> str:
    """The id of a progress event: a digest of what it shows."""
    return hashlib.sha256(document).hexdigest()[:16]


def _event(name: str, ident: str, data: bytes) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (ident.encode(), name.encode(), data)


class EventStream:
    """The WSGI iterable of one event stream; ``close()`` (called by the
    server, also when the client went away) runs ``release`` once."""

    def __init__(
        self,
        store: Store,
        record: TaskRecord,
        *,
        document: Callable[[TaskRecord], bytes],
        location: str,
        last_event_id: str | None,
        max_wait: float,
        retry_ms: int,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.record = record
        self.document = document
        self.location = location
        self.last_event_id = last_event_id
        self.max_wait = max_wait
        self.retry_ms = retry_ms
        self._release = release

    def __iter__(self) -> Iterator[bytes]:
        return self._events()

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def _events(self) -> Iterator[bytes]:
        deadline = time.monotonic() + self.max_wait
        last = self.last_event_id
        record: TaskRecord | None = self.record
        yield b"retry: %d\n\n" % self.retry_ms
        while record is not None and record.state in ("queued", "running"):
            document = self.document(record)
            ident = event_id(document)
            if ident != last:
                yield _event("progress", ident, document)
                last = ident
            seen = record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                record = self.store.watch(record.id, seen, min(remaining, _KEEPALIVE))
            except StoreUnavailable:
                # The client reconnects, and gets a 503 while the store is down.
                logger.warning("asyncwsgi: event stream of task %s ended: store error", seen.id)
                return
            if record is not None and not changed(seen, record):
                yield b": keep-alive\n\n"
        if record is not None and record.state == "done" and record.result is not None:
            if last != DONE_ID:
                done = {"status": record.result.code, "location": self.location}
                yield _event("done", DONE_ID, json.dumps(done, separators=(",", ":")).encode())
