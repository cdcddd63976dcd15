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
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

__all__ = ["Response", "TaskTimeout", "fetch"]

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
) -> Response:
    """Send a request to an asyncwsgi endpoint and follow it to its result.

    ``wait`` is the ``Prefer: wait`` sent with the submission and the polls
    (seconds, bounded by what is left of ``timeout``; 0 sends none);
    ``max_interval`` caps a ``Retry-After`` between polls. ``on_progress`` is
    called with the task's ``progress`` object each time it changes. Raises
    :class:`TaskTimeout` when ``timeout`` seconds pass first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    body = data.encode() if isinstance(data, str) else data
    extra = dict(headers or {})
    response = _request(method, url, body, extra, _wait_for(wait, deadline), deadline)
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
        poll_headers = {k: v for k, v in extra.items() if k.lower() in _POLL_HEADERS}
        current = status_url
        response = _request(
            "GET", status_url, None, poll_headers, _wait_for(wait, deadline), deadline
        )
    return response


# Headers worth repeating on polls: the ones that identify the caller.
_POLL_HEADERS = frozenset({"authorization", "cookie"})


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
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
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
