"""A small client for asyncwsgi endpoints, standard library only.

>>> response = fetch("http://127.0.0.1:8000/reports/q3", method="POST", timeout=60)
>>> response.status, response.body

``fetch`` submits with ``Prefer: wait=<n>`` so that a fast task is answered in
one round trip; a ``202 Accepted`` is followed to its ``Location`` until the
app's response is ready, which is returned exactly as the app gave it: any
status, no redirects followed. With ``on_progress``, the status URL's event
stream is followed when the server offers one (each progress change arrives
as it happens); otherwise, and without ``on_progress``, long polls (again
with ``Prefer: wait``) or sleeps of ``Retry-After``.
"""

from __future__ import annotations

import http.client
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

__all__ = ["Response", "ServerUnreachable", "TaskTimeout", "fetch"]

Progress = dict[str, Any]


class TaskTimeout(TimeoutError):
    """The task was not finished before the client's ``timeout``."""

    def __init__(self, message: str, status_url: str | None = None) -> None:
        super().__init__(message)
        self.status_url = status_url


@dataclass
class Response:
    """The final response: the app's own status, headers and body."""

    status: int
    headers: Message
    body: bytes
    url: str = ""

    @property
    def ok(self) -> bool:
        """True for 2xx and 3xx."""
        return 200 <= self.status < 400

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    url: str,
    *,
    method: str = "GET",
    data: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    wait: int = 2,
    max_interval: float = 5.0,
    poll_headers: Iterable[str] | None = None,
    retry_for: float = 30.0,
    events: bool = True,
) -> Response:
    """Send a request to an asyncwsgi endpoint and follow it to its result.

    ``wait`` is the ``Prefer: wait`` sent with the submission and the polls
    (seconds, bounded by what is left of ``timeout``; 0 sends none);
    ``max_interval`` caps a ``Retry-After`` between polls. ``on_progress`` is
    called with the task's ``progress`` object each time it changes. Raises
    :class:`TaskTimeout` when ``timeout`` seconds pass first.

    Progress as it happens: with ``on_progress`` (and ``events``, the
    default), the submission does not wait, and the status URL is read as
    Server-Sent Events (``Accept: text/event-stream``): each ``progress``
    event reaches ``on_progress`` when the server sends it, and after
    ``done`` the result is fetched from the status URL. A server that
    answers the status URL with anything but an event stream is long-polled
    instead, as without ``on_progress`` (a long poll answers when the task
    ends, so progress seen that way may lag by up to ``wait`` seconds).

    Polls repeat the caller's headers named in ``poll_headers``; by default
    every header given except those that describe the submission itself
    (``Content-*``, ``Idempotency-Key``, ``Prefer``, ``Expect``), so that
    whatever an ``owner`` reads (``Authorization``, a cookie, ``X-Api-Key``)
    reaches the status URL too.

    What is retried, for up to ``retry_for`` seconds of failures in a row
    (and never past ``timeout``): a connection that fails or drops, and a
    ``503`` with ``Retry-After`` (the server asks to come back). Polls are
    ``GET`` requests and safe to repeat; the submission is repeated with the
    same ``Idempotency-Key`` (one of its own, unless ``headers`` has one),
    which the server answers with the task it already accepted: a retry
    never runs the work twice. After that, :class:`ServerUnreachable` (a
    ``ConnectionError`` naming the URL) is raised, or the last 503 returned.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    body = data.encode() if isinstance(data, str) else data
    extra = _with_idempotency_key(headers)
    polling = _Polling(
        _repeated(extra, poll_headers), wait, timeout, deadline, retry_for, max_interval
    )
    # Progress wanted and a stream to show it: a submission that waited would
    # hide every change made while it waits.
    follow = events and on_progress is not None
    submit_wait = 0 if follow else wait
    response = _retrying(
        method, url, body, extra, submit_wait, deadline, retry_for, max_interval, None
    )
    return _until_done(response, url, polling, _Changes(on_progress), follow)


def _with_idempotency_key(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's headers, with an ``Idempotency-Key`` of its own unless
    they have one: a repeated submission then never runs the work twice."""
    extra = dict(headers or {})
    if not any(name.lower() == "idempotency-key" for name in extra):
        extra["Idempotency-Key"] = secrets.token_urlsafe(16)
    return extra


def _repeated(headers: dict[str, str], poll_headers: Iterable[str] | None) -> dict[str, str]:
    """The caller's headers that polls repeat (see :func:`fetch`)."""
    if poll_headers is None:
        return {k: v for k, v in headers.items() if not _describes_submission(k)}
    wanted = {name.lower() for name in poll_headers}
    return {k: v for k, v in headers.items() if k.lower() in wanted}


@dataclass(frozen=True)
class _Polling:
    """What every poll of one :func:`fetch` shares."""

    headers: dict[str, str]
    wait: int
    timeout: float | None
    deadline: float | None
    retry_for: float
    max_interval: float

    def get(self, url: str, wait: int) -> Response:
        """A poll of ``url``, retried (``wait``: its ``Prefer: wait``)."""
        return _retrying(
            "GET", url, None, self.headers, wait, self.deadline, self.retry_for,
            self.max_interval, url,
        )  # fmt: skip


def _until_done(
    response: Response, url: str, polling: _Polling, seen: _Changes, follow: bool
) -> Response:
    """Follow a 202 to the app's response: by the event stream while
    ``follow`` and the server offers one, else by long polls."""
    deadline = polling.deadline
    current = url
    while response.status == 202 and response.headers.get("Location"):
        status_url = urllib.parse.urljoin(current, response.headers["Location"])
        seen.report(_progress_of(response.body))
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TaskTimeout(
                f"the task at {status_url} was not done after {polling.timeout} s", status_url
            )
        if follow:
            streamed = _follow_events(status_url, polling, seen)
            if streamed is _NOT_OFFERED:
                follow = False  # the server answers polls only: long-poll from now on
            elif isinstance(streamed, Response):
                response, current = streamed, status_url
                continue
            # else the stream broke: one ordinary poll (it retries), then again
        if not response.headers.get("Preference-Applied"):
            # The server did not wait for us: honour Retry-After before polling.
            pause = min(_retry_after(response.headers.get("Retry-After")), polling.max_interval)
            if remaining is not None:
                pause = min(pause, remaining)
            time.sleep(max(pause, 0.0))
        current = status_url
        response = polling.get(status_url, polling.wait)
    return response


class _Changes:
    """Calls ``on_progress`` once per change of the progress object, however
    it arrived (a 202 document, an event, a reconnected stream's first event)."""

    def __init__(self, on_progress: Callable[[Progress], None] | None) -> None:
        self.on_progress = on_progress
        self.last: Progress | None = None

    def report(self, progress: Progress | None) -> None:
        if progress is not None and progress != self.last:
            self.last = progress
            if self.on_progress is not None:
                self.on_progress(progress)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# What _follow_events returns besides the answer after ``done``.
_NOT_OFFERED = _Marker("not offered")  # the status URL answered a poll, not a stream
_BROKEN = _Marker("broken")  # the stream failed: poll once (that retries), then again

# How long a stream may stay silent before the client gives up on it: the
# server sends a comment every 15 s on a quiet stream.
_STREAM_SILENCE = 45.0


def _follow_events(status_url: str, polling: _Polling, seen: _Changes) -> Response | _Marker:
    """Read the task's event stream, reconnecting when the server ends it
    (it does after ``max_wait``), until ``done``; then the status URL's
    answer, fetched as a poll would. A first answer that is not an event
    stream is returned as it is, unless it is a 202 (no stream offered) or
    a 503 (come back later), which the polling loop handles."""
    deadline = polling.deadline
    last_event_id: str | None = None
    retry = 1.0
    while True:
        started = time.monotonic()
        outcome = _read_stream(status_url, polling.headers, last_event_id, deadline, seen)
        if isinstance(outcome, Response):
            if outcome.status == 202:
                seen.report(_progress_of(outcome.body))
                return _NOT_OFFERED
            if outcome.status == 503:
                return _BROKEN
            return outcome
        if outcome is None:
            return _BROKEN
        last_event_id, retry, location = outcome
        if location is not None:
            return polling.get(urllib.parse.urljoin(status_url, location), 0)
        # The server ended the stream before the task: reconnect, no sooner
        # than ``retry`` after the last connection (as EventSource does).
        pause = min(retry, polling.max_interval) - (time.monotonic() - started)
        if deadline is not None:
            if time.monotonic() >= deadline:
                raise TaskTimeout(f"the task at {status_url} was not done in time", status_url)
            pause = min(pause, deadline - time.monotonic())
        if pause > 0:
            time.sleep(pause)


def _read_stream(
    url: str,
    headers: Mapping[str, str],
    last_event_id: str | None,
    deadline: float | None,
    seen: _Changes,
) -> Response | tuple[str | None, float, str | None] | None:
    """One connection to the event stream. Returns the answer when it is not
    a stream; else (the last event id, the retry interval in seconds, the
    ``done`` event's location or None) once the server ends it; None when
    the connection failed."""
    sent = dict(headers)
    sent["Accept"] = "text/event-stream"
    if last_event_id is not None:
        sent["Last-Event-ID"] = last_event_id
    silence = _STREAM_SILENCE
    if deadline is not None:
        silence = min(silence, max(deadline - time.monotonic(), 0.01))
    connection = _connect(url, silence)
    events = _Events(last_event_id)
    try:
        connection.request("GET", _target(url), headers=sent)
        answer = connection.getresponse()
        media_type = (answer.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if answer.status != 200 or media_type != "text/event-stream":
            return Response(answer.status, answer.msg, answer.read(), url)
        while True:
            _bound_read(connection, deadline, url)
            raw = answer.readline()
            if not raw:
                return events.last_event_id, events.retry, None  # the server ended the stream
            event = events.line(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if event is None:
                continue
            name, data = event
            if name == "progress":
                seen.report(_progress_of(data.encode()))
            elif name == "done":
                return events.last_event_id, events.retry, _done_location(data, url)
    except TimeoutError:
        if deadline is not None and time.monotonic() >= deadline:
            raise TaskTimeout(f"the task at {url} was not done in time", url) from None
        return None  # a stream silent for too long: the caller polls
    except (http.client.HTTPException, OSError):
        return None
    finally:
        connection.close()


def _bound_read(connection: http.client.HTTPConnection, deadline: float | None, url: str) -> None:
    """The next read waits no longer than the stream may stay silent, and
    never past ``deadline`` (TaskTimeout once it has passed)."""
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TaskTimeout(f"the task at {url} was not done in time", url)
    if connection.sock is not None:
        connection.sock.settimeout(min(_STREAM_SILENCE, left))


class _Events:
    """Server-Sent Events read line by line: the event each blank line ends,
    and the stream's last event id and retry interval so far."""

    def __init__(self, last_event_id: str | None) -> None:
        self.last_event_id = last_event_id
        self.retry = 1.0
        self._name = "message"
        self._data: list[str] = []

    def line(self, line: str) -> tuple[str, str] | None:
        """The event (name, data) that ``line`` ends, if it is a blank line
        after some data; else None."""
        if line:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                self._name = value
            elif field == "data":
                self._data.append(value)
            elif field == "id":
                self.last_event_id = value
            elif field == "retry" and value.isdigit():
                self.retry = int(value) / 1000
            return None
        event = (self._name, "\n".join(self._data)) if self._data else None
        self._name, self._data = "message", []
        return event


def _done_location(data: str, url: str) -> str:
    """Where the ``done`` event says the result is (``url`` if it says none)."""
    try:
        done = json.loads(data)
    except ValueError:
        done = None
    location = done.get("location") if isinstance(done, dict) else None
    return location if isinstance(location, str) else url


class ServerUnreachable(ConnectionError):
    """The server could not be reached (or dropped the connection) for longer
    than the client retries. ``url`` is the URL that failed; ``status_url``
    the task's status URL once the task was accepted, to poll later."""

    def __init__(self, message: str, url: str, status_url: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status_url = status_url


def _describes_submission(name: str) -> bool:
    lowered = name.lower()
    return lowered.startswith("content-") or lowered in _SUBMISSION_ONLY


# Headers about the submission's body or handling, not about who is asking.
_SUBMISSION_ONLY = frozenset({"idempotency-key", "prefer", "expect", "transfer-encoding"})


def _retrying(
    method: str,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str],
    wait: int,
    deadline: float | None,
    retry_for: float,
    max_interval: float,
    status_url: str | None,
) -> Response:
    """One request, repeated on what is safe to repeat (see :func:`fetch`)."""
    give_up = time.monotonic() + retry_for
    if deadline is not None:
        give_up = min(give_up, deadline)
    pause = 0.1
    while True:
        try:
            response = _request(method, url, body, headers, _wait_for(wait, deadline), deadline)
        except (http.client.HTTPException, OSError) as exc:
            if isinstance(exc, TimeoutError | http.client.InvalidURL):
                raise  # a timeout is the caller's; a bad URL stays bad
            if time.monotonic() + pause > give_up:
                if deadline is not None and time.monotonic() + pause > deadline:
                    raise TaskTimeout(
                        f"{url} could not be reached before the timeout ({exc})",
                        status_url,
                    ) from exc
                raise ServerUnreachable(f"could not reach {url}: {exc}", url, status_url) from exc
        else:
            retry_after = response.headers.get("Retry-After")
            if response.status not in _RETRIED or retry_after is None:
                return response
            pause = max(pause, min(_retry_after(retry_after), max_interval))
            if time.monotonic() + pause > give_up:
                return response
        time.sleep(pause)
        pause = min(pause * 2, max_interval)


# 503 + Retry-After: the service asks to be tried again later (nothing was
# accepted: the server is full or closing, or its store is down).
_RETRIED = frozenset({503})


def _wait_for(wait: int, deadline: float | None) -> int:
    if deadline is None:
        return max(wait, 0)
    return max(0, min(wait, int(deadline - time.monotonic())))


def _retry_after(value: str | None) -> float:
    if value is None:
        return 1.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0  # an HTTP date: poll again soon rather than parse it


def _progress_of(body: bytes) -> Progress | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    progress = document.get("progress") if isinstance(document, dict) else None
    return progress if isinstance(progress, dict) else None


_PATH_SAFE = "/%!$&'()*+,;=:@"


def _connect(url: str, socket_timeout: float | None) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=socket_timeout)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=socket_timeout)


def _target(url: str) -> str:
    """The request target: what a server sent may be an IRI or hold spaces,
    so it is sent percent-encoded (existing escapes kept), as browsers and
    requests do."""
    parts = urllib.parse.urlsplit(url)
    target = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        target += "?" + urllib.parse.quote(parts.query, safe=_PATH_SAFE + "?")
    return target


def _request(
    method: str,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str],
    wait: int,
    deadline: float | None,
) -> Response:
    # The socket timeout covers the server's wait plus some slack.
    if deadline is None:
        socket_timeout: float | None = None
    else:
        socket_timeout = max(deadline - time.monotonic(), 0.0) + wait + 5.0
    connection = _connect(url, socket_timeout)
    target = _target(url)
    sent = {k: v for k, v in headers.items() if k.lower() != "prefer"}
    prefer = [v for k, v in headers.items() if k.lower() == "prefer"]
    if wait:
        prefer.append(f"wait={wait}")
    if prefer:
        sent["Prefer"] = ", ".join(prefer)
    try:
        connection.request(method.upper(), target, body=body, headers=sent)
        answer = connection.getresponse()
        content = answer.read()
        return Response(answer.status, answer.msg, content, url)
    except TimeoutError as exc:
        raise TaskTimeout(f"no answer from {url} in time", url) from exc
    finally:
        connection.close()
