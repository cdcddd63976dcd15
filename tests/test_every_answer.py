"""Every kind of answer the middleware gives itself, through a real server,
with ``wsgiref.validate`` on both sides: status lines carry the standard
reason phrases (``http.HTTPStatus``), 204s carry no ``Content-Type``, and
nothing the middleware sends breaks PEP 3333 (a validator's complaint is a
500 from the server, which every check here would see)."""

from __future__ import annotations

import base64
import http.client
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.validate import validator

import pytest

from asyncwsgi import AsyncMiddleware
from asyncwsgi.owner import by_header

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

USER = {"X-User": "alice"}
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """/work/slow takes a second with progress; anything else answers at once."""
    task = environ.get("asyncwsgi.task")
    if environ["PATH_INFO"] == "/work/slow":
        for step in range(5):
            if task is not None:
                if task.cancelled:
                    break
                task.set_progress(step, 5)
            time.sleep(0.2)
    body = b"0123456789"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [body]


@dataclass
class Answer:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(application: WSGIApplication) -> Iterator[str]:
    """The standard library's own server: its environ is what PEP 3333 says
    to the letter, so the validator in front of the middleware checks the
    middleware and nothing the server adds (werkzeug's has an int port)."""
    server = make_server(
        "127.0.0.1", 0, application, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Site:
    def __init__(self, base: str, middleware: AsyncMiddleware) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "", parts.port or 80
        self.middleware = middleware

    def ask(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers={**USER, **(headers or {})})
            answer = connection.getresponse()
            return Answer(answer.status, answer.reason, answer.msg, answer.read())
        finally:
            connection.close()

    def submit(self, path: str = "/work/slow", **headers: str) -> str:
        answer = self.ask("POST", path, headers, b"x")
        assert answer.status == 202, answer
        return answer.headers["Location"]

    def done(self, location: str) -> Answer:
        for _ in range(100):
            answer = self.ask("GET", location)
            if answer.status != 202:
                return answer
            time.sleep(0.1)
        raise AssertionError(f"{location} not done")


@pytest.fixture
def site() -> Iterator[Site]:
    middleware = AsyncMiddleware(
        validator(app),
        paths=["/work/*"],
        owner=by_header("X-User"),
        max_body=1000,
        max_wait=1,
        result_ttl=2,
        metrics_path="/metrics",
        callback_allow=["https://hooks.example.com/"],
        callback_secret=SECRET,
    )
    try:
        with serving(validator(middleware)) as base:
            yield Site(base, middleware)
    finally:
        middleware.close(timeout=10)


def own(answer: Answer, code: int) -> None:
    """One of the middleware's own answers: the code and its standard phrase."""
    assert (answer.status, answer.reason) == (code, HTTPStatus(code).phrase), answer
    if code in (204, 304):
        assert answer.headers.get("Content-Type") is None, answer.headers
        assert answer.body == b""


def test_every_answer_is_valid_and_says_its_standard_phrase(site: Site) -> None:
    # Submissions and their refusals.
    location = site.submit()
    own(site.ask("GET", location), 202)
    own(site.ask("HEAD", location), 202)
    own(site.ask("POST", "/work/slow", {"X-User": ""}, b"x"), 403)
    own(site.ask("POST", "/work/slow", {"Idempotency-Key": "\x7f"}, b"x"), 400)
    own(site.ask("POST", "/work/slow", {"Callback-URL": "https://elsewhere.example/"}, b"x"), 400)
    # (A malformed Content-Length is a 400 too, but the validator in front
    # refuses such an environ before the middleware sees it.)
    own(site.ask("POST", "/work/slow", {}, b"x" * 1001), 413)
    site.submit("/work/slow", **{"Idempotency-Key": "k1"})
    own(site.ask("POST", "/work/slow", {"Idempotency-Key": "k1"}, b"x"), 202)  # a retry
    own(site.ask("POST", "/work/slow", {"Idempotency-Key": "k1"}, b"other"), 422)
    waited = site.ask("POST", "/work/fast", {"Prefer": "wait=5"}, b"x")  # capped at max_wait
    assert (waited.status, waited.headers["Preference-Applied"]) == (200, "wait=1"), waited

    # The status URL: the event stream, and one resumed after done.
    stream = site.ask("GET", location, {"Accept": "text/event-stream"})
    assert stream.status == 200 and b"event: done" in stream.body, stream
    own(site.ask("GET", location, {"Accept": "text/event-stream", "Last-Event-ID": "done"}), 204)
    # The replay, whole and in part (the app's own status line, then ranges).
    replayed = site.ask("GET", location)
    assert (replayed.status, replayed.reason, replayed.body) == (200, "OK", b"0123456789")
    headed = site.ask("HEAD", location)
    assert (headed.status, headed.body, headed.headers["Content-Length"]) == (200, b"", "10")
    own(site.ask("GET", location, {"Range": "bytes=2-4"}), 206)
    own(site.ask("GET", location, {"Range": "bytes=50-60"}), 416)
    own(site.ask("PUT", location), 405)
    own(site.ask("GET", "/status/" + "A" * 32), 404)
    own(site.ask("GET", "/status/nonsense"), 404)

    # DELETE of a running task, then of one that is gone.
    running = site.submit()
    own(site.ask("DELETE", running), 204)
    own(site.ask("DELETE", running), 404)

    # The task list, the metrics, and what passes through.
    own(site.ask("GET", "/status/"), 200)
    own(site.ask("GET", "/status/", {"X-User": ""}), 403)
    own(site.ask("GET", "/status/?limit=x"), 400)
    own(site.ask("GET", "/metrics"), 200)
    own(site.ask("POST", "/metrics"), 405)
    assert site.ask("GET", "/elsewhere").body == b"0123456789"

    # Expired (410 while the tombstone is kept), then closed (503). Polled
    # until result_ttl (2 s) has passed, rather than a fixed pause past it.
    deadline = time.monotonic() + 10
    while (expired := site.ask("GET", location)).status == 200:
        assert time.monotonic() < deadline, expired
        time.sleep(0.05)
    own(expired, 410)
    closing = threading.Thread(target=site.middleware.close, kwargs={"timeout": 10})
    closing.start()
    closing.join(timeout=15)
    own(site.ask("POST", "/work/slow", {}, b"x"), 503)
