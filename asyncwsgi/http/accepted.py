"""The 202 Accepted of a task not done yet, and its JSON document (also the
data of an event stream's ``progress`` events)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..task import TaskRecord
from .urls import StatusURLs

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..settings import Settings

__all__ = ["Accepted", "document", "encode_json", "iso"]

# One encoder for every 202: json.dumps() with options builds a new one per call.
encode_json = json.JSONEncoder(separators=(",", ":")).encode
_json_str = json.encoder.encode_basestring_ascii


# The last second iso() formatted, and its text: a busy service formats the
# same second over and over (one tuple, replaced whole: safe across threads).
_last_second: tuple[int, str] = (-1, "")


def iso(timestamp: float | None) -> str | None:
    """``2026-12-07T08:12:16.123Z``: UTC, milliseconds truncated after the
    microseconds are rounded (as ``datetime.isoformat`` gives them)."""
    global _last_second
    if timestamp is None:
        return None
    second = math.floor(timestamp)
    micros = round((timestamp - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached = _last_second
    if cached[0] == second:
        text = cached[1]
    else:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{micros // 1000:03d}Z"


def document(record: TaskRecord, location: str) -> bytes:
    """The JSON of a 202 (and of a progress event): the keys in this order,
    compact, ASCII. Written out rather than built as a dict and encoded, as
    every 202 of a busy service comes through here; only the progress, the
    app's own data, goes through the encoder."""
    progress = "null" if record.progress is None else encode_json(record.progress)
    return (
        f'{{"id":{_json_str(record.id)},"state":{_json_str(record.state)},'
        f'"status_url":{_json_str(location)},"created":{_json_time(record.created)},'
        f'"started":{_json_time(record.started)},"progress":{progress}}}'
    ).encode()


def _json_time(timestamp: float | None) -> str:
    return "null" if timestamp is None else f'"{iso(timestamp)}"'


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
