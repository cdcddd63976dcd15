"""asyncwsgi.client.fetch and the asyncwsgi command against real servers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncwsgi import AsyncMiddleware
from asyncwsgi.client import TaskTimeout, fetch
from bench.services import free_port
from tests.helpers import serving

ROOT = Path(__file__).resolve().parent.parent


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """/fast answers at once, /slow/<steps> takes 0.15 s a step with progress,
    /fail answers 500, /moved answers a redirect, /echo echoes the body."""
    path = environ["PATH_INFO"]
    task = environ.get("asyncwsgi.task")
    if path.startswith("/slow/"):
        steps = int(path[6:])
        for step in range(steps):
            if task is not None:
                task.set_progress(step + 1, steps, f"step {step + 1}")
            time.sleep(0.15)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow done\n"]
    if path == "/fail":
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"broken\n"]
    if path == "/moved":
        start_response("302 Found", [("Location", "/elsewhere")])
        return [b""]
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"echo:" + body + b"\xff\x00"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fast\n"]


class Counting:
    """Counts the requests reaching the server, outside the middleware."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with self.lock:
            self.requests.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
        result: Iterable[bytes] = self.inner(environ, start_response)
        return result


@pytest.fixture
def server() -> Iterator[tuple[str, Counting]]:
    middleware = AsyncMiddleware(app, paths=["/*"], retry_after=1)
    counting = Counting(middleware)
    try:
        with serving(counting) as base:
            yield base, counting
    finally:
        middleware.close(timeout=5)


def test_fast_task_one_round_trip(server: tuple[str, Counting]) -> None:
    base, counting = server
    response = fetch(base + "/fast", method="POST", data="x", timeout=10)
    assert response.status == 200
    assert response.body == b"fast\n"
    assert response.headers.get("content-type") == "text/plain"
    assert counting.requests == ["POST /fast"]


def test_slow_task_polls_and_reports_progress(server: tuple[str, Counting]) -> None:
    base, counting = server
    seen: list[dict[str, Any]] = []
    response = fetch(base + "/slow/8", method="POST", timeout=20, on_progress=seen.append, wait=0)
    assert response.status == 200
    assert response.body == b"slow done\n"
    polls = [r for r in counting.requests if r.startswith("GET /status/")]
    assert len(polls) >= 1
    assert seen, "on_progress was never called"
    done = [p["done"] for p in seen]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert all(p["total"] == 8 for p in seen)


def test_long_polls_with_progress(server: tuple[str, Counting]) -> None:
    base, counting = server
    seen: list[dict[str, Any]] = []
    # 20 steps of 0.15 s: longer than the submission's wait=1, then long polls.
    response = fetch(base + "/slow/20", method="POST", timeout=20, on_progress=seen.append, wait=1)
    assert response.status == 200
    polls = [r for r in counting.requests if r.startswith("GET /status/")]
    assert 1 <= len(polls) <= 4  # long polls, not a busy loop
    assert seen and [p["done"] for p in seen] == sorted(p["done"] for p in seen)


def test_timeout_raises_task_timeout(server: tuple[str, Counting]) -> None:
    base, _ = server
    started = time.monotonic()
    with pytest.raises(TaskTimeout) as info:
        fetch(base + "/slow/12", method="POST", timeout=1.0)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 4
    assert info.value.status_url is not None and "/status/" in info.value.status_url


def test_errors_and_redirects_are_returned(server: tuple[str, Counting]) -> None:
    base, _ = server
    failed = fetch(base + "/fail", method="POST", timeout=10)
    assert failed.status == 500 and failed.body == b"broken\n"
    moved = fetch(base + "/moved", method="POST", timeout=10)
    assert moved.status == 302 and moved.headers.get("Location") == "/elsewhere"


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "asyncwsgi", *args],
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_cli_get_prints_body_and_progress(server: tuple[str, Counting]) -> None:
    base, _ = server
    # 20 steps of 0.15 s outlast the submission's Prefer: wait=2.
    result = _run("get", base + "/slow/20", "-X", "POST", "-d", "x")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"slow done\n"
    assert b"progress: " in result.stderr
    assert b"/20 step " in result.stderr


def test_cli_get_binary_body_and_error_exit(server: tuple[str, Counting]) -> None:
    base, _ = server
    result = _run("get", base + "/echo", "-X", "POST", "-d", "x", "-H", "X-Test: 1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"echo:x\xff\x00"
    failed = _run("get", base + "/fail", "-X", "POST")
    assert failed.returncode == 1
    assert failed.stdout == b"broken\n"


def test_cli_get_timeout(server: tuple[str, Counting]) -> None:
    base, _ = server
    result = _run("get", base + "/slow/12", "-X", "POST", "--timeout", "1")
    assert result.returncode == 1
    assert b"timed out" in result.stderr


def test_cli_demo() -> None:
    result = _run("demo")
    assert result.returncode == 0, result.stderr
    assert b'"report": "q3"' in result.stdout
    assert b"progress: " in result.stderr


def test_cli_serve() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncwsgi",
            "serve",
            "tests.test_client_cli:app",
            "--path",
            "/slow/*",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/".encode() in line
        base = f"http://127.0.0.1:{port}"
        seen: list[dict[str, Any]] = []
        response = fetch(base + "/slow/4", method="POST", timeout=20, on_progress=seen.append)
        assert response.status == 200 and response.body == b"slow done\n"
        # An unmarked path goes straight to the app.
        with urllib.request.urlopen(base + "/fast", timeout=10) as plain:
            assert plain.status == 200 and plain.read() == b"fast\n"
        # SIGTERM stops it like Ctrl-C; close() lets the task just submitted finish.
        urllib.request.urlopen(
            urllib.request.Request(base + "/slow/4", method="POST"), timeout=10
        ).close()
        process.terminate()
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
