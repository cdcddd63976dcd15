"""PEP 3333 on both sides of the middleware, faults in the app, exact capture."""

from __future__ import annotations

import threading
import time
from wsgiref.validate import validator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.capture import ProtocolError, capture

from .helpers import captured_headers, wait_done


def plain(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def test_wsgiref_validator_on_both_sides(wrap):
    mw = wrap(validator(plain))
    client = Client(validator(mw))
    with client.post("/work/1", data=b"abc", buffered=True) as submitted:
        location = submitted.headers["Location"]
    done = wait_done(client, location, buffered=True)
    assert done.data == b"abc"
    done.close()
    with client.get("/other", data=b"", buffered=True) as direct:
        assert direct.status_code == 200


# The lint still holds RFC 2616's absolute Location; RFC 9110 (10.2.2) allows a
# relative reference, and the status URL is a path on purpose (never built from Host).
@pytest.mark.filterwarnings("ignore:Absolute URLs required for location header")
def test_werkzeug_lint_on_both_sides(wrap):
    mw = wrap(LintMiddleware(plain))
    client = Client(LintMiddleware(mw))
    response = client.post("/work/1", data=b"abc")
    location = response.headers["Location"]
    response.close()
    done = wait_done(client, location)
    assert done.data == b"abc"
    done.close()


@st.composite
def responses(draw):
    code = draw(st.integers(200, 599))
    reason = draw(st.from_regex(r"[!-~]([ -~]{0,18}[!-~])?", fullmatch=True))
    name = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-XYZ"), min_size=1, max_size=12)
    value = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=30)
    headers = draw(st.lists(st.tuples(name, value), max_size=8))
    if headers and draw(st.booleans()):
        headers.append(headers[0])  # a duplicate, like several Set-Cookie
    chunks = draw(st.lists(st.binary(max_size=64), max_size=8))
    use_write = draw(st.lists(st.booleans(), min_size=len(chunks), max_size=len(chunks)))
    return f"{code} {reason}", headers, chunks, use_write


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_random_responses_come_back_byte_for_byte(response):
    status, headers, chunks, use_write = response

    def app(environ, start_response):
        write = start_response(status, list(headers))
        yielded = []
        for chunk, by_write in zip(chunks, use_write, strict=True):
            if by_write:
                write(chunk)
            else:
                yielded.append(chunk)
        return yielded

    mw = AsyncMiddleware(app, paths=["/work"])
    try:
        client = Client(mw)
        location = client.post("/work").headers["Location"]
        done = wait_done(client, location)
        written = b"".join(c for c, w in zip(chunks, use_write, strict=True) if w)
        yielded = b"".join(c for c, w in zip(chunks, use_write, strict=True) if not w)
        assert done.status == status
        assert captured_headers(done.headers.to_wsgi_list(), headers) == headers
        assert done.data == written + yielded
    finally:
        mw.close(timeout=5)


def _header_is_valid(name: str, value: str) -> bool:
    # PEP 3333 with RFC 9110: a name is non-empty ASCII without ':' or line
    # breaks, a value is latin-1 without line breaks.
    return (
        bool(name)
        and name.isascii()
        and not any(c in name for c in "\r\n:")
        and all(ord(c) < 256 for c in value)
        and "\r" not in value
        and "\n" not in value
    )


_header_text = st.text(alphabet=st.sampled_from("aZ-_: \t\r\n\x00\x7f\xe9\u0100\u20ac"), max_size=6)


@settings(max_examples=300, deadline=None)
@given(name=_header_text, value=_header_text)
def test_capture_accepts_exactly_the_headers_a_server_may_send(name, value):
    def app(environ, start_response):
        start_response("200 OK", [(name, value)])
        return [b"body"]

    if _header_is_valid(name, value):
        result = capture(app, {}, max_result=100)
        assert result.headers == [(name, value)]
    else:
        with pytest.raises(ProtocolError):
            capture(app, {}, max_result=100)


class ClosingBody:
    def __init__(self, chunks, fail_at=None, close_raises=False):
        self.chunks = chunks
        self.fail_at = fail_at
        self.close_raises = close_raises
        self.closed = 0

    def __iter__(self):
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError("mid-iteration")
            yield chunk

    def close(self):
        self.closed += 1
        if self.close_raises:
            raise RuntimeError("close failed")


def raises_before(environ, start_response):
    raise RuntimeError("before start_response")


def raises_after(environ, start_response):
    start_response("200 OK", [])
    raise RuntimeError("after start_response")


def never_starts(environ, start_response):
    return [b"no headers"]


def never_starts_empty(environ, start_response):
    return []


def twice(environ, start_response):
    start_response("200 OK", [])
    start_response("201 Created", [])
    return [b""]


def str_body(environ, start_response):
    start_response("200 OK", [])
    return ["text, not bytes"]


def crlf_header(environ, start_response):
    start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwn=1")])
    return [b""]


def bad_status(environ, start_response):
    start_response("OK", [])
    return [b""]


@pytest.mark.parametrize(
    "app",
    [
        pytest.param(raises_before, id="raises-before-start_response"),
        pytest.param(raises_after, id="raises-after-start_response"),
        pytest.param(never_starts, id="never-calls-start_response"),
        pytest.param(never_starts_empty, id="empty-without-start_response"),
        pytest.param(twice, id="start_response-twice"),
        pytest.param(str_body, id="str-body-chunk"),
        pytest.param(crlf_header, id="crlf-in-header"),
        pytest.param(bad_status, id="bad-status-line"),
    ],
)
def test_faults_end_the_task_as_a_generic_500_and_are_logged(wrap, caplog, app):
    client = Client(wrap(app))
    location = client.post("/work/1").headers["Location"]
    done = wait_done(client, location)
    assert done.status_code == 500
    assert b"Traceback" not in done.data and b"Error:" not in done.data
    assert "pwn" not in str(done.headers)
    assert any("failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "fail_at, close_raises",
    [
        pytest.param(1, False, id="mid-iteration"),
        pytest.param(None, True, id="close-raises"),
        pytest.param(1, True, id="both"),
    ],
)
def test_iterable_close_is_called_exactly_once_even_on_error(wrap, fail_at, close_raises):
    bodies: list[ClosingBody] = []

    def app(environ, start_response):
        start_response("200 OK", [])
        body = ClosingBody([b"a", b"b", b"c"], fail_at, close_raises)
        bodies.append(body)
        return body

    client = Client(wrap(app))
    done = wait_done(client, client.post("/work/1").headers["Location"])
    assert done.status_code == 500
    assert [b.closed for b in bodies] == [1]


def test_exc_info_replaces_headers_not_yet_sent(wrap):
    def app(environ, start_response):
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            start_response("503 Service Unavailable", [("X-Second", "2")], sys.exc_info())
        return [b"sorry"]

    client = Client(wrap(app))
    done = wait_done(client, client.post("/work/1").headers["Location"])
    assert done.status == "503 Service Unavailable"
    assert done.headers.get("X-Second") == "2" and "X-First" not in done.headers
    assert done.data == b"sorry"


def test_result_over_max_result_stops_iteration_closes_and_fails(wrap):
    bodies: list[ClosingBody] = []

    def app(environ, start_response):
        start_response("200 OK", [])
        body = ClosingBody([b"x" * 60] * 100)
        bodies.append(body)
        return body

    client = Client(wrap(app, max_result=100))
    done = wait_done(client, client.post("/work/1").headers["Location"])
    assert done.status_code == 500
    assert bodies[0].closed == 1


def test_two_thousand_tasks_from_sixteen_clients_none_lost_threads_bounded(wrap):
    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"echo:", body]

    mw = wrap(app, max_workers=8, max_pending=5000)
    baseline = threading.active_count()
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], threading.active_count())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    failures: list[str] = []

    def client_thread(n: int) -> None:
        client = Client(mw)
        locations = []
        for i in range(125):
            payload = f"{n}-{i}".encode()
            response = client.post("/work/x", data=payload)
            if response.status_code != 202:
                failures.append(f"submit {payload!r}: {response.status}")
                continue
            locations.append((payload, response.headers["Location"]))
        for payload, location in locations:
            done = wait_done(client, location, timeout=60)
            if done.data != b"echo:" + payload:
                failures.append(f"{payload!r}: {done.status} {done.data!r}")

    clients = [threading.Thread(target=client_thread, args=(n,)) for n in range(16)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    stop.set()
    sampler.join()
    assert failures == []
    # the 16 clients and the sampler are ours; the pool adds at most max_workers
    assert peak[0] <= baseline + 16 + 1 + 8 + 1
    assert mw.executor.threads <= 8
