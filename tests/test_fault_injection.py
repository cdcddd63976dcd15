"""Fault injection: for each store and each fault, every accepted task reaches
a final answer within ``BOUND`` seconds of the fault's end, the cause is in
the log, and no result the app produced is lost while the store can take it.

The faults are real: a redis-server SIGKILLed and started again (with an
append-only file, as a production Redis keeps its data), an SQLite write lock
held by another process past the store's busy timeout, a process that exits
the ordinary way or is SIGKILLed with tasks running and queued, an app that
raises ``SystemExit`` or ``KeyboardInterrupt``. A memory store cannot be
unavailable and dies with its process, so it takes part only in the app
faults. docs/faults.md states each guarantee with its test here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.stores import open_store
from asyncwsgi.stores.sqlite import SQLiteStore
from bench.services import RedisServer

from .helpers import wait_done
from .redis_fixture import _need

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# Seconds from the end of a fault to every task's final answer.
BOUND = 10.0
# How long each outage lasts.
OUTAGE = 1.0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(_need("redis-server"), "--appendonly", "yes", "--appendfsync", "always") as r:
        yield r


class Outage:
    """Make the store unavailable (:meth:`begin`) and bring it back (:meth:`end`)."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.locker: subprocess.Popen[str] | None = None
        if kind == "redis":
            self.redis: RedisServer = request.getfixturevalue("redis_server")
            self.store: Any = self.redis.url(0)
        else:
            self.path = str(tmp_path / "tasks.db")
            # A busy timeout shorter than the lock: the lock is an outage.
            self.store = SQLiteStore(self.path, timeout=0.2)

    def begin(self) -> None:
        if self.kind == "redis":
            self.redis.kill()
            return
        code = (
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            f"time.sleep({OUTAGE})\n"
            "c.execute('COMMIT')\n"
        )
        self.locker = subprocess.Popen(
            [sys.executable, "-c", code, self.path], stdout=subprocess.PIPE, text=True
        )
        assert self.locker.stdout is not None
        assert self.locker.stdout.readline().strip() == "locked"
        self.locker.stdout.close()

    def end(self) -> None:
        if self.kind == "redis":
            time.sleep(OUTAGE)
            self.redis.start()
        elif self.locker is not None:
            self.locker.wait(OUTAGE + 10)
            self.locker = None

    def close(self) -> None:
        if self.locker is not None:
            self.locker.kill()
            self.locker.wait()
        if self.kind == "sqlite":
            self.store.close()


@pytest.fixture(params=["sqlite", "redis"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    made = Outage(request.param, tmp_path, request)
    try:
        yield made
    finally:
        made.close()


class Gated:
    """An app that, on ``/work/gated``, signals ``entered``, waits for ``go``,
    reports progress, and answers; other paths answer at once."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/work/gated":
            self.entered.set()
            self.go.wait(BOUND * 2)
            environ["asyncwsgi.task"].set_progress(1, 1, "almost done")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done " + path.encode()]


def final(client: Client, location: str, since: float) -> Any:
    response = wait_done(client, location, timeout=BOUND)
    assert time.monotonic() - since < BOUND
    return response


def run_with(outage: Outage, body: Callable[[Client, Gated, AsyncMiddleware], None]) -> None:
    app = Gated()
    mw = AsyncMiddleware(app, paths=["/work/*"], store=outage.store, max_workers=1)
    try:
        body(Client(mw), app, mw)
    finally:
        app.go.set()
        assert mw.close(timeout=BOUND)
    assert mw.runner.held == [] and mw.runner.pending_results == 0


# -- the store unavailable ------------------------------------------------------


def test_store_unavailable_during_submit(outage: Outage, caplog: Any) -> None:
    def body(client: Client, app: Gated, mw: AsyncMiddleware) -> None:
        outage.begin()
        refused = client.post("/work/now")
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        outage.end()
        accepted = client.post("/work/now")
        assert accepted.status_code == 202
        response = final(client, accepted.headers["Location"], time.monotonic())
        assert response.data == b"done /work/now"

    run_with(outage, body)
    assert "unavailable" in caplog.text.lower()


def test_store_unavailable_when_a_task_starts(outage: Outage, caplog: Any) -> None:
    def body(client: Client, app: Gated, mw: AsyncMiddleware) -> None:
        first = client.post("/work/gated").headers["Location"]
        queued = client.post("/work/queued").headers["Location"]
        assert app.entered.wait(5)
        outage.begin()
        app.go.set()  # the first finishes and the queued one starts: store away
        outage.end()
        since = time.monotonic()
        assert final(client, first, since).data == b"done /work/gated"
        assert final(client, queued, since).data == b"done /work/queued"

    run_with(outage, body)
    assert "could not start" in caplog.text


def test_store_unavailable_when_progress_is_reported(outage: Outage, caplog: Any) -> None:
    def body(client: Client, app: Gated, mw: AsyncMiddleware) -> None:
        location = client.post("/work/gated").headers["Location"]
        assert app.entered.wait(5)
        outage.begin()
        app.go.set()  # set_progress while the store is away: the work goes on
        outage.end()
        assert final(client, location, time.monotonic()).data == b"done /work/gated"

    run_with(outage, body)
    assert "progress not recorded" in caplog.text


def test_store_unavailable_when_a_task_finishes(outage: Outage, caplog: Any) -> None:
    def body(client: Client, app: Gated, mw: AsyncMiddleware) -> None:
        location = client.post("/work/gated").headers["Location"]
        assert app.entered.wait(5)
        outage.begin()
        app.go.set()
        time.sleep(0.3)  # the result is ready while the store is away
        outage.end()
        assert final(client, location, time.monotonic()).data == b"done /work/gated"

    run_with(outage, body)
    assert "could not store the result" in caplog.text


def test_store_unavailable_during_a_poll(outage: Outage, caplog: Any) -> None:
    def body(client: Client, app: Gated, mw: AsyncMiddleware) -> None:
        location = client.post("/work/now").headers["Location"]
        assert wait_done(client, location).data == b"done /work/now"
        outage.begin()
        during = client.get(location)
        if outage.kind == "sqlite":
            # WAL mode: readers never wait for the writer, so a poll under
            # another process's write lock is answered as usual.
            assert during.status_code == 200
        else:
            assert during.status_code == 503 and during.headers["Retry-After"]
        outage.end()
        assert final(client, location, time.monotonic()).data == b"done /work/now"

    run_with(outage, body)
    if outage.kind == "redis":
        assert "unavailable" in caplog.text.lower()


def test_store_unavailable_while_a_result_waits_for_room(outage: Outage, caplog: Any) -> None:
    """A writer waiting for room in the byte budget outlives an outage and
    gets its room once the store is back and a result goes."""
    mib = 2**20
    gate = threading.Event()
    chunks = [bytes([i]) * 65536 for i in range(32)]  # 2 MiB

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        gate.wait(BOUND)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return chunks

    mw = AsyncMiddleware(
        app,
        paths=["/work/*"],
        store=outage.store,
        max_workers=2,
        spool_threshold=64 * 1024,
        max_stored_bytes=3 * mib,
        max_result=2 * mib + 4096,
    )
    client = Client(mw)
    try:
        first, second = (client.post("/work/big").headers["Location"] for _ in range(2))
        gate.set()
        deadline = time.monotonic() + BOUND
        while True:  # one writer stores its result, the other waits for room
            codes = [client.get(location).status_code for location in (first, second)]
            if 200 in codes and "waits for room" in caplog.text:
                break
            assert time.monotonic() < deadline, codes
            time.sleep(0.05)
        done, waiting = (first, second) if codes[0] == 200 else (second, first)
        outage.begin()
        time.sleep(0.5)  # a few rounds of the wait fail against the store
        outage.end()
        assert client.delete(done).status_code == 204
        response = final(client, waiting, time.monotonic())
        assert response.status_code == 200
        assert response.get_data() == b"".join(chunks)
    finally:
        gate.set()
        assert mw.close(timeout=BOUND)


# -- the process goes away ------------------------------------------------------


def shared_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url(1)
    return "sqlite:///" + str(tmp_path / "tasks.db")


def start_process(store_url: str, lease: float) -> tuple[subprocess.Popen[str], list[str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.apps.fault_process", store_url, str(lease)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    locations = [proc.stdout.readline().strip() for _ in range(2)]
    assert proc.stdout.readline().strip() == "ready"
    return proc, locations


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_the_process_exits_gracefully(kind: str, tmp_path: Path, request: Any) -> None:
    """A graceful exit (SIGTERM, then the ordinary exit: a server's stop)
    waits for the running and the queued task: both end with the app's
    answer, not a lease timeout."""
    url = shared_store(kind, tmp_path, request)
    proc, (running, queued) = start_process(url, lease=30.0)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(BOUND + 10)  # close() at exit waits up to 10 s
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    reader = AsyncMiddleware(Gated(), paths=["/work/*"], store=url)
    try:
        client = Client(reader)
        since = time.monotonic()
        assert final(client, running, since).data == b"done /work/slow"
        assert final(client, queued, since).data == b"done /work/queued"
    finally:
        reader.close(timeout=5)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_the_process_is_killed(kind: str, tmp_path: Path, request: Any, caplog: Any) -> None:
    """SIGKILL with one task running and one queued: once the lease passes,
    any process's read ends them, 500 for the one that ran in part, 503 for
    the one that never started (safe to send again), and logs why."""
    lease = 1.0
    url = shared_store(kind, tmp_path, request)
    proc, (running, queued) = start_process(url, lease)
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    reader = AsyncMiddleware(Gated(), paths=["/work/*"], store=url)
    try:
        client = Client(reader)
        since = time.monotonic()
        lost = final(client, running, since)
        assert lost.status_code == 500 and b"lost" in lost.data
        never = final(client, queued, since)
        assert never.status_code == 503 and b"not started in time" in never.data
        assert time.monotonic() - since < lease + BOUND
    finally:
        reader.close(timeout=5)
    assert "stopped renewing its lease" in caplog.text


# -- the app ----------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield None
    elif request.param == "sqlite":
        yield "sqlite:///" + str(tmp_path / "tasks.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = open_store(server.url(2))
        yield store
        store.close()


@pytest.mark.parametrize("exception", [SystemExit, KeyboardInterrupt], ids=lambda e: e.__name__)
def test_the_app_raises_a_base_exception(any_store: Any, exception: type, caplog: Any) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/work/raise":
            raise exception()
        start_response("200 OK", [])
        return [b"ok"]

    mw = AsyncMiddleware(app, paths=["/work/*"], store=any_store, max_workers=1)
    client = Client(mw)
    try:
        since = time.monotonic()
        for _ in range(3):  # more than the pool's one thread
            assert (
                final(client, client.post("/work/raise").headers["Location"], since).status_code
                == 500
            )
        assert final(client, client.post("/work/fine").headers["Location"], since).data == b"ok"
        assert mw.executor.threads == 1
    finally:
        assert mw.close(timeout=BOUND)
    assert exception.__name__ in caplog.text
