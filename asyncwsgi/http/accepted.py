"""The 202 Accepted of a task not done yet, and its JSON document (also the
data of an event stream's ``progress`` events)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..task import TaskRecord
from .urls import StatusURLs

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..settings import Settings

__all__ = ["Accepted", "document", "encode_json", "iso"]

# One encoder for every 202: json.dumps() with options builds a new one per call.
encode_json = json.JSONEncoder(separators=(",", ":")).encode


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def document(record: TaskRecord, location: str) -> bytes:
    """The JSON of a 202 (and of a progress event)."""
    return encode_json(
        {
            "id": record.id,
            "state": record.state,
            "status_url": location,
            "created": iso(record.created),
            "started": iso(record.started),
            "progress": record.progress,
        }
    ).encode()


class Accepted:
    """``accepted(environ, start_response, record)``: the 202 with
    ``Location``, an adaptive ``Retry-After`` and the task's document."""

    def __init__(self, settings: Settings, urls: StatusURLs) -> None:
        self.retry_after = settings.retry_after
        self.max_retry_after = settings.max_retry_after
        self.urls = urls

    def retry_after_for(self, age: float) -> int:
        """Seconds a client should wait before the next poll of a task this old:
        ``retry_after`` while the task is young, then a tenth of its age,
        capped at ``max_retry_after``; a long task is polled less often."""
        return min(self.max_retry_after, max(self.retry_after, int(age / 10)))

    def __call__(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        record: TaskRecord,
        applied: str = "",
        extra: list[tuple[str, str]] | None = None,
    ) -> Iterable[bytes]:
        location = self.urls(environ, record.id)
        body = document(record, location)
        # Written directly rather than through a Response object: every 202
        # of a busy service goes through here.
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Location", location),
            ("Retry-After", str(self.retry_after_for(time.time() - record.created))),
            ("Vary", "Prefer"),
        ]
        if applied:
            headers.append(("Preference-Applied", applied))
        if extra:
            headers += extra
        start_response("202 Accepted", headers)
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]
