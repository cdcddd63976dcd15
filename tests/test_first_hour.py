"""The first hour of a new user: each mistake caught when the middleware is
built (or when ``asyncwsgi serve`` starts), in words that say what to write
instead; never a 500 on every request, silence, or a traceback."""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from bench.services import free_port, terminate, wait_port
from tests.helpers import program
from tests.servers import ROOT

pytestmark = pytest.mark.timeout(120)


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]


def app_factory() -> Any:
    return app


def paste_factory(global_config: dict[str, str], **settings: str) -> Any:
    return app


def three(environ: Any, start_response: Any, extra: Any) -> Iterable[bytes]:
    return []


class ClassApp:
    """A class is a WSGI app too: calling it makes the iterable."""

    def __init__(self, environ: Any, start_response: Any) -> None:
        start_response("200 OK", [])

    def __iter__(self) -> Iterator[bytes]:
        yield b"done"


class CallableApp:
    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        return app(environ, start_response)


# -- item 2: the app -----------------------------------------------------


@pytest.mark.parametrize(
    "given, says",
    [
        pytest.param(
            "flaskapp:app",
            r"not the string 'flaskapp:app': import it first \(from flaskapp import app\), "
            r"or serve it by that name with `asyncwsgi serve flaskapp:app",
            id="a module:attr string",
        ),
        pytest.param(None, r"not NoneType None", id="None"),
        pytest.param(json, r"not the module 'json': pass the app it holds", id="a module"),
        pytest.param(app_factory, r"takes no arguments, as an app factory does", id="a factory"),
        pytest.param(paste_factory, r"PasteDeploy app factory", id="a PasteDeploy factory"),
        pytest.param(three, r"does not take them", id="three arguments"),
    ],
)
def test_what_is_not_a_wsgi_app_is_refused_at_build(given: Any, says: str) -> None:
    with pytest.raises(TypeError, match=says):
        AsyncMiddleware(given, paths=["/r"])


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(app, id="a function"),
        pytest.param(ClassApp, id="a class"),
        pytest.param(CallableApp(), id="a callable object"),
        pytest.param(functools.partial(app), id="a partial"),
    ],
)
def test_wsgi_apps_of_every_shape_are_taken(given: Any) -> None:
    middleware = AsyncMiddleware(given, paths=["/r"])
    try:
        with Client(middleware).get("/elsewhere") as response:
            assert response.status_code == 200
    finally:
        middleware.close(timeout=5)


def test_a_flask_app_is_taken() -> None:
    flask = pytest.importorskip("flask")
    middleware = AsyncMiddleware(flask.Flask(__name__), paths=["/r"])
    middleware.close(timeout=5)


# -- item 3: patterns ----------------------------------------------------


def test_no_pattern_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.warns(UserWarning, match=r"no paths and no prefer_paths"):
        middleware = AsyncMiddleware(app)
    middleware.close(timeout=5)
    logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in logged if "no paths and no prefer_paths" in r.getMessage()]


@pytest.mark.parametrize("pattern", ["^/reports/.*$", "reports/.*", r"reports/\d+"])
def test_a_regex_as_a_string_gets_a_hint(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"must start with '/': for a regular expression, pass "):
        AsyncMiddleware(app, paths=[pattern])


def test_a_plain_name_gets_no_regex_hint() -> None:
    with pytest.raises(ValueError, match=r"must start with '/'$"):
        AsyncMiddleware(app, paths=["reports"])


def test_the_startup_line_lists_the_patterns(caplog: pytest.LogCaptureFixture) -> None:
    import re

    caplog.set_level(logging.INFO, logger="asyncwsgi")
    middleware = AsyncMiddleware(
        app,
        paths=["/reports", "/exports/*", re.compile(r"/x/\d+"), "/r/<int:n>"],
        prefer_paths=["/slow/*"],
        methods=["POST"],
    )
    middleware.close(timeout=5)
    lines = [r.getMessage() for r in caplog.records if "tasks for" in r.getMessage()]
    assert lines == [
        "asyncwsgi: tasks for POST on paths '/reports' (this path only), '/exports/*' "
        "(* matches anything), '/x/\\\\d+' (regex), '/r/<int:n>' (rule); prefer_paths "
        "'/slow/*' (* matches anything) (with Prefer: respond-async)"
    ]


# -- item 4: stores at start -------------------------------------------------


def test_a_store_that_cannot_be_reached_at_start_says_so_then_recovers(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    executable = program("redis-server")
    port = free_port()
    started = time.monotonic()
    middleware = AsyncMiddleware(app, paths=["/r"], store=f"redis://127.0.0.1:{port}/0")
    server = None
    try:
        assert time.monotonic() - started < 10
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([m for m in said if "the task store cannot be reached" in m]) == 1, said
        client = Client(middleware)
        with client.post("/r") as refused:
            assert refused.status_code == 503 and refused.headers["Retry-After"]
        server = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(port, server)
        with client.post("/r") as accepted:
            assert accepted.status_code == 202
    finally:
        middleware.close(timeout=10)
        if server is not None:
            terminate(server)


def test_a_reachable_store_says_nothing(caplog: pytest.LogCaptureFixture, tmp_path: Any) -> None:
    middleware = AsyncMiddleware(app, paths=["/r"], store=f"sqlite:///{tmp_path}/tasks.db")
    middleware.close(timeout=5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_missing_redis_client_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None  # as if redis-py were not installed\n"
        "from asyncwsgi import AsyncMiddleware\n"
        "AsyncMiddleware(lambda e, s: [], paths=['/r'], store='redis://127.0.0.1:6379/0')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "ModuleNotFoundError: the store redis: URL needs redis-py: "
        "pip install 'asyncwsgi-middleware[redis]'"
    ), result.stderr


# -- item 2: asyncwsgi serve, through the real command -----------------------


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncwsgi", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    "args, says",
    [
        pytest.param(("myap:app", "--path", "/r"), "no module named 'myap'", id="module typo"),
        pytest.param(
            ("tests.apps.moving_app:ap", "--path", "/r"),
            "module 'tests.apps.moving_app' has no 'ap'",
            id="attribute typo",
        ),
        pytest.param(("tests.apps.moving_app", "--path", "/r"), "expected MODULE:APP", id="no :"),
        pytest.param(
            ("examples.demo_app:make_app", "--path", "/r"),
            "PasteDeploy app factory",
            id="a PasteDeploy factory",
        ),
        pytest.param(
            ("tests.apps.moving_app:app", "--path", "/r", "--max-pending", "lots"),
            "--max-pending",
            id="a bad value",
        ),
        pytest.param(
            ("tests.apps.moving_app:app", "--path", "/r", "--max-pnding", "3"),
            "--max-pnding",
            id="a flag typo",
        ),
        pytest.param(("tests.apps.moving_app:app",), "--path", id="no path"),
        pytest.param(
            ("tests.apps.moving_app:app", "--path", "reports/.*"),
            "re.compile",
            id="a regex as a path",
        ),
    ],
)
def test_serve_mistakes_are_one_line(args: tuple[str, ...], says: str) -> None:
    result = _serve(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert says in lines[0], lines[0]


def test_serve_says_in_one_line_that_its_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve("tests.apps.moving_app:app", "--path", "/r", "--port", str(port))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], result.stderr


def test_serve_calls_an_app_factory_written_with_parentheses(tmp_path: Any) -> None:
    port = free_port()
    log = tmp_path / "stderr"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "asyncwsgi", "serve", "tests.apps.moving_app:create_app()",
             "--path", "/moves/*", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )  # fmt: skip
    try:
        wait_port(port, process, timeout=30)
        from asyncwsgi.client import fetch

        response = fetch(f"http://127.0.0.1:{port}/moves/1", method="POST", timeout=30)
        assert response.status == 200 and response.body == b"moved 1 times\n"
    finally:
        terminate(process)
    # What the user of the command sees: the patterns in force.
    said = log.read_text()
    assert "asyncwsgi: tasks for " in said and "'/moves/*' (* matches anything)" in said, said
