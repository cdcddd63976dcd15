"""A status URL asked for ``text/event-stream``: the task's ``progress``
events, then ``done`` (the events themselves are made in
:mod:`asyncwsgi.events`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..events import DONE_ID, EventStream
from ..task import TaskRecord
from .accepted import document
from .responses import no_content
from .urls import StatusURLs
from .waits import Waits

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..settings import Settings
    from ..stores import Store

__all__ = ["Streams"]


class Streams:
    """``streams(environ, start_response, record)``: the stream of one task."""

    def __init__(self, store: Store, settings: Settings, urls: StatusURLs, waits: Waits) -> None:
        self.store = store
        self.max_wait = settings.max_wait
        self.retry_ms = settings.retry_after * 1000
        self.urls = urls
        self.waits = waits

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse, record: TaskRecord
    ) -> Iterable[bytes]:
        last_event_id = environ.get("HTTP_LAST_EVENT_ID")
        if record.state == "done" and last_event_id == DONE_ID:
            # Seen to the end: 204 tells an EventSource not to reconnect.
            return no_content(environ, start_response)
        location = self.urls(environ, record.id)
        # A stream waits, so it takes one of the process's waiting slots; with
        # none free it sends what there is now and ends at once, and the
        # client reconnects after ``retry``: polling, at its pace.
        waits = self.waits.take()
        stream = EventStream(
            self.store,
            record,
            document=lambda current: document(current, location),
            location=location,
            last_event_id=last_event_id,
            max_wait=self.max_wait if waits else 0.0,
            retry_ms=self.retry_ms,
            release=self.waits.give if waits else None,
        )
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/event-stream"),
                ("Cache-Control", "no-cache"),
                # Tells nginx not to buffer the stream.
                ("X-Accel-Buffering", "no"),
            ],
        )
        return stream
