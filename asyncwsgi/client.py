"""A small client for asyncwsgi endpoints, standard library only.

>>> response = fetch("http://127.0.0.1:8000/reports/q3", method="POST", timeout=60)
>>> response.status, response.body

``fetch`` submits with ``Prefer: wait=<n>`` so that a fast task is answered in
one round trip; a ``202 Accepted`` is followed to its ``Location`` (long polls,
again with ``Prefer: wait``, or sleeps of ``Retry-After``) until the app's
response is ready, which is returned exactly as the app gave it: any status,
no redirects followed.
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
) -> Response:
    """Send a request to an asyncwsgi endpoint and follow it to its result.

    ``wait`` is the ``Prefer: wait`` sent with the submission and the polls
    (seconds, bounded by what is left of ``timeout``; 0 sends none);
    ``max_interval`` caps a ``Retry-After`` between polls. ``on_progress`` is
    called with the task's ``progress`` object each time it changes. Raises
    :class:`TaskTimeout` when ``timeout`` seconds pass first.

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
    extra = dict(headers or {})
    if not any(name.lower() == "idempotency-key" for name in extra):
        extra["Idempotency-Key"] = secrets.token_urlsafe(16)
    if poll_headers is None:
        repeated = {k: v for k, v in extra.items() if not _describes_submission(k)}
    else:
        wanted = {name.lower() for name in poll_headers}
        repeated = {k: v for k, v in extra.items() if k.lower() in wanted}
    response = _retrying(method, url, body, extra, wait, deadline, retry_for, max_interval, None)
    last_progress: Progress | None = None
    current = url
    while response.status == 202 and response.headers.get("Location"):
        status_url = urllib.parse.urljoin(current, response.headers["Location"])
        progress = _progress_of(response.body)
        if progress is not None and progress != last_progress:
            last_progress = progress
            if on_progress is not None:
                on_progress(progress)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TaskTimeout(
                f"the task at {status_url} was not done after {timeout} s", status_url
            )
        if not response.headers.get("Preference-Applied"):
            # The server did not wait for us: honour Retry-After before polling.
            pause = min(_retry_after(response.headers.get("Retry-After")), max_interval)
            if remaining is not None:
                pause = min(pause, remaining)
            time.sleep(max(pause, 0.0))
        current = status_url
        response = _retrying(
            "GET", status_url, None, repeated, wait, deadline, retry_for, max_interval, status_url
        )
    return response


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


def _request(
    method: str,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str],
    wait: int,
    deadline: float | None,
) -> Response:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    # The socket timeout covers the server's wait plus some slack.
    if deadline is None:
        socket_timeout: float | None = None
    else:
        socket_timeout = max(deadline - time.monotonic(), 0.0) + wait + 5.0
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=socket_timeout)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=socket_timeout)
    # What a server sent may be an IRI or hold spaces: sent percent-encoded
    # (existing escapes kept), as browsers and requests do.
    target = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        target += "?" + urllib.parse.quote(parts.query, safe=_PATH_SAFE + "?")
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
