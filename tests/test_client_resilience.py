"""asyncwsgi.client.fetch and ``asyncwsgi get`` when the server does not
cooperate: owners that read a header, a server that drops a connection or
restarts between polls, a 503 asking to come back, an unreachable URL."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from asyncwsgi import AsyncMiddleware
from asyncwsgi.client import ServerUnreachable, TaskTimeout, fetch
from asyncwsgi.owner import by_cookie, by_header
from bench.services import free_port
from tests.helpers import serving
from tests.servers import ROOT, wsgi_server


class Recorder:
    """A slow app (0.4 s) that records the request headers of each run."""

    def __init__(self) -> None:
        self.runs: list[dict[str, str]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.runs.append({k: v for k, v in environ.items() if k.startswith("HTTP_")})
        self.release.wait(10)
        time.sleep(0.4)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"done {len(self.runs)}".encode()]


@contextmanager
def served(app: Any, **options: Any) -> Iterator[tuple[str, AsyncMiddleware]]:
    options.setdefault("paths", ["/work/*"])
    middleware = AsyncMiddleware(app, **options)
    try:
        with serving(middleware) as base:
            yield base, middleware
    finally:
        middleware.close(timeout=10)


# -- owners ------------------------------------------------------------------


@pytest.mark.parametrize(
    "owner, headers",
    [
        pytest.param(by_header("X-Api-Key"), {"X-Api-Key": "k-1"}, id="x-api-key"),
        pytest.param(by_header(), {"Authorization": "Bearer t"}, id="authorization"),
        pytest.param(by_cookie("sid"), {"Cookie": "sid=s1"}, id="cookie"),
    ],
)
def test_polls_repeat_what_the_owner_reads(owner: Any, headers: dict[str, str]) -> None:
    with served(Recorder(), owner=owner) as (base, _):
        response = fetch(
            base + "/work/x",
            method="POST",
            data=b"{}",
            headers={**headers, "Content-Type": "application/json"},
            wait=0,
            timeout=20,
        )
    assert (response.status, response.body) == (200, b"done 1")


def test_poll_headers_can_be_narrowed() -> None:
    with served(Recorder(), owner=by_header("X-Api-Key")) as (base, _):
        response = fetch(
            base + "/work/x",
            method="POST",
            headers={"X-Api-Key": "k-1"},
            poll_headers=["Authorization"],
            wait=0,
            timeout=20,
        )
    assert response.status == 404  # the poll did not say who it was


# -- idempotency keys ------------------------------------------------------------


def test_every_submission_has_its_own_idempotency_key() -> None:
    recorder = Recorder()
    with served(recorder) as (base, _):
        for _ in range(2):
            assert fetch(base + "/work/x", method="POST", timeout=20).status == 200
        fetch(base + "/work/x", method="POST", headers={"Idempotency-Key": "mine"}, timeout=20)
    keys = [run["HTTP_IDEMPOTENCY_KEY"] for run in recorder.runs]
    assert len(keys) == 3 and keys[0] != keys[1] and keys[2] == "mine"


class DroppingProxy:
    """A TCP proxy in front of a server: it forwards each request and its
    answer, except that it drops the answer to the first POST (the server
    did get it): the client sees a connection closed without a response."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            request = b""
            while b"\r\n\r\n" not in request:
                request += client.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += client.recv(65536)
            line, _, rest = head.partition(b"\r\n")
            forwarded = line + b"\r\nConnection: close\r\n" + rest + b"\r\n\r\n" + body
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(forwarded)
                answer = b""
                while chunk := upstream.recv(65536):
                    answer += chunk
            if line.startswith(b"POST") and not self.dropped:
                self.dropped += 1
                return  # closed without an answer
            client.sendall(answer)

    def close(self) -> None:
        self.listener.close()


def test_a_submission_retried_after_a_dropped_connection_runs_once() -> None:
    recorder = Recorder()
    with served(recorder) as (base, _):
        proxy = DroppingProxy(int(base.rsplit(":", 1)[1]))
        try:
            response = fetch(f"http://127.0.0.1:{proxy.port}/work/x", method="POST", timeout=20)
        finally:
            proxy.close()
    assert proxy.dropped == 1
    assert (response.status, response.body) == (200, b"done 1")
    assert len(recorder.runs) == 1


# -- 503 with Retry-After ------------------------------------------------------------


def test_submission_is_retried_on_503_with_retry_after() -> None:
    recorder = Recorder()
    recorder.release.clear()
    with served(recorder, max_pending=1, retry_after=1) as (base, _):
        first = urllib.request.urlopen(urllib.request.Request(base + "/work/1", method="POST"))
        assert first.status == 202  # the one pending task: the server is now full
        threading.Timer(0.5, recorder.release.set).start()
        started = time.monotonic()
        response = fetch(base + "/work/second", method="POST", timeout=20)
    assert response.status == 200
    assert time.monotonic() - started >= 0.5
    assert len(recorder.runs) == 2


# -- unreachable ---------------------------------------------------------------


def test_connection_errors_name_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/work/x"
    with pytest.raises(ServerUnreachable, match=f"could not reach {url}") as caught:
        fetch(url, method="POST", retry_for=0.3)
    assert caught.value.url == url
    with pytest.raises(TaskTimeout, match=url):
        fetch(url, method="POST", timeout=0.5)
    cli = subprocess.run(
        [sys.executable, "-m", "asyncwsgi", "get", url, "--timeout", "0.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 1
    assert url in cli.stderr


# -- a server restarted between polls ----------------------------------------------


@pytest.mark.slow
def test_fetch_polls_across_a_gunicorn_restart_on_sqlite(tmp_path: Path) -> None:
    env = {"ASYNCWSGI_TEST_STORE": "sqlite:///" + str(tmp_path / "tasks.db")}
    port = free_port()
    app = "tests.apps.shared_app:application"
    outcome: list[Any] = []

    def client() -> None:
        try:
            outcome.append(
                fetch(
                    f"http://127.0.0.1:{port}/work/slow?seconds=1.5",
                    method="POST",
                    data=b"payload",
                    wait=0,
                    max_interval=0.2,
                    timeout=60,
                )
            )
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    with wsgi_server("gunicorn-sync", app, tmp_path / "first.log", env, port=port):
        thread.start()
        time.sleep(0.5)
    # The first server is gone (it let the running task finish into the
    # store); the client's polls fail until a new one listens on the port.
    time.sleep(1.5)
    assert thread.is_alive()
    with wsgi_server("gunicorn-sync", app, tmp_path / "second.log", env, port=port):
        thread.join(30)
    ((response,),) = [outcome]
    assert not isinstance(response, Exception), response
    assert (response.status, response.body) == (200, b"/work/slow|seconds=1.5|payload")
