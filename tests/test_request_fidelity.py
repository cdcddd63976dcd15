"""What the app reads in a task is what it would read in a direct call: the
body of a chunked request, on every executor and framework; never half a
body; Flask rules with the app's own converters; header values that are
``str`` subclasses; ``max_result`` counting what is stored."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from werkzeug.routing import BaseConverter
from werkzeug.test import Client, create_environ, run_wsgi_app

from asyncwsgi.environ import json_environ, snapshot, task_environ

from .helpers import wait_done
from .servers import SERVERS, wsgi_server

BODY = b"".join(f"line {i}\n".encode() for i in range(5000))


def _chunked_environ(body: bytes) -> dict[str, Any]:
    """A chunked request as gunicorn hands it over: no CONTENT_LENGTH, a
    terminated stream, the Transfer-Encoding header."""
    environ = create_environ("/work/echo", method="POST")
    environ.pop("CONTENT_LENGTH", None)
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input_terminated"] = True
    environ["wsgi.input"] = io.BytesIO(body)
    return environ


def test_one_body_rule_for_every_executor() -> None:
    # The thread pool hands the snapshot over; Celery, RQ, Django Tasks (any
    # executor whose workers are other processes) send only its JSON part. Both get the body the
    # same way, from task_environ.
    from werkzeug.wrappers import Request

    environ = _chunked_environ(BODY)
    for base in (snapshot(environ), json_environ(snapshot(environ))):
        rebuilt = task_environ(base, BODY)
        assert Request(rebuilt).get_data() == BODY
        assert rebuilt["CONTENT_LENGTH"] == str(len(BODY))
        assert rebuilt["wsgi.input_terminated"] is True
        assert "HTTP_TRANSFER_ENCODING" not in rebuilt
    # A request without a body keeps what it had.
    assert "CONTENT_LENGTH" not in task_environ({"REQUEST_METHOD": "GET"}, b"")
    assert task_environ({"CONTENT_LENGTH": "0"}, b"")["CONTENT_LENGTH"] == "0"


def test_a_truncated_terminated_body_is_400_and_no_task(wrap) -> None:
    ran: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ran.append(1)
        start_response("200 OK", [])
        return []

    mw = wrap(app)
    environ = create_environ("/work/x", method="POST")
    environ["CONTENT_LENGTH"] = "100000"
    environ["wsgi.input"] = io.BytesIO(b"x" * 40000)
    environ["wsgi.input_terminated"] = True
    body, status, _ = run_wsgi_app(mw, environ, buffered=True)
    assert status.startswith("400")
    assert b"40000 of 100000" in b"".join(body)
    assert ran == []
    assert mw.store.count_active() == 0


# -- through real servers -------------------------------------------------


def _answer(port: int, method: str, path: str, body: Any = None, **headers: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers, encode_chunked=body is not None)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _follow(port: int, location: str, timeout: float = 20.0) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = _answer(port, "GET", location)
        if status != 202:
            return status, body
        assert time.monotonic() < deadline, f"{location} still 202"
        time.sleep(0.02)


def _chunks(body: bytes, size: int = 7000) -> Any:
    return (body[i : i + size] for i in range(0, len(body), size))


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SERVERS))
@pytest.mark.parametrize(
    "app", ["tests.apps.echo_app:application", "tests.apps.django_echo:application"]
)
def test_chunked_post_reaches_the_task_whole(tmp_path: Path, kind: str, app: str) -> None:
    with wsgi_server(kind, app, tmp_path / "server.log") as port:
        status, headers, _ = _answer(port, "POST", "/echo", _chunks(BODY))
        assert status == 202, (status, (tmp_path / "server.log").read_text())
        status, body = _follow(port, headers["Location"])
    assert status == 200, body
    seen = json.loads(body)
    assert (seen["length"], seen["sha256"]) == (len(BODY), hashlib.sha256(BODY).hexdigest())


def _truncated(port: int) -> bytes:
    """Content-Length: 100000, 40,000 bytes, then the client stops sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"x" * 40000
        )
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SERVERS))
def test_half_a_body_never_becomes_a_task(tmp_path: Path, kind: str) -> None:
    runs = tmp_path / "runs"
    runs.touch()
    env = {"ASYNCWSGI_TEST_RUNS": str(runs)}
    with wsgi_server(kind, "tests.apps.echo_app:application", tmp_path / "log", env) as port:
        answer = _truncated(port)
        # gunicorn hands the app a stream that ends early: 400. waitress waits
        # for the rest and drops the request when the client goes: no answer.
        if kind.startswith("gunicorn"):
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        else:
            assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]
        time.sleep(0.5)
        assert runs.read_text() == ""
        # The control: a whole body does become a task, and runs.
        status, headers, _ = _answer(port, "POST", "/echo", b"x" * 100000)
        assert status == 202
        assert _follow(port, headers["Location"])[0] == 200
    assert len(runs.read_text().splitlines()) == 1


# -- Flask: the app's own converters ---------------------------------------


class _ListConverter(BaseConverter):
    regex = r"[a-z]+(?:,[a-z]+)*"

    def to_python(self, value: str) -> list[str]:
        return value.split(",")


def test_flask_rule_with_a_registered_converter() -> None:
    from flask import Flask

    from asyncwsgi.contrib.flask import AsyncWSGI

    app = Flask(__name__)
    app.url_map.converters["list"] = _ListConverter
    aw = AsyncWSGI(app)

    @app.post("/merge/<list:names>")
    @aw.background
    def merge(names: list[str]) -> dict[str, Any]:
        return {"names": names}

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    try:
        client = Client(app)
        assert client.get("/plain").get_data() == b"plain"
        submitted = client.post("/merge/a,b,c")
        assert submitted.status_code == 202
        done = wait_done(client, submitted.headers["Location"])
        assert done.json == {"names": ["a", "b", "c"]}
        assert client.post("/merge/A").status_code == 404  # the converter's regex
    finally:
        aw.middleware.close(timeout=5)


def test_flask_unmarked_routes_survive_a_middleware_that_cannot_be_built(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flask import Flask

    from asyncwsgi.contrib.flask import AsyncWSGI

    app = Flask(__name__)
    AsyncWSGI(app, status_path="no-slashes")  # refused when the middleware is built

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    assert Client(app).get("/plain").get_data() == b"plain"
    assert "could not set up the middleware" in caplog.text


# -- the response's values ---------------------------------------------------


def test_header_values_that_are_str_subclasses(wrap) -> None:
    from markupsafe import Markup

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(
            Markup("200 OK"), [(Markup("X-Title"), Markup("<b>Q3</b>")), ("Content-Length", "2")]
        )
        return [b"ok"]

    client = Client(wrap(app))
    done = wait_done(client, client.post("/work/x").headers["Location"])
    assert done.status_code == 200
    assert done.headers["X-Title"] == "<b>Q3</b>"
    assert done.get_data() == b"ok"


@pytest.mark.parametrize("store", ["memory:", "sqlite"])
def test_max_result_counts_the_headers(wrap, tmp_path: Path, store: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-Big", "x" * 2 * 2**20)])
        return [b"0123456789"]

    url = "sqlite:///" + str(tmp_path / "t.db") if store == "sqlite" else store
    client = Client(wrap(app, store=url, max_result=2**20))
    done = wait_done(client, client.post("/work/x").headers["Location"])
    assert done.status_code == 500
    assert "X-Big" not in done.headers
