"""The runner under real store faults: every accepted task ends, no result the
app produced is lost while the store can take it, no background thread dies.

The faults are real: a redis-server killed and started again (with an
append-only file, so the tasks are still there), an SQLite write lock held by
another process past the store's busy timeout, a tmpfs too small for a result.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.stores.sqlite import SQLiteStore
from bench.services import RedisServer
from tests.helpers import unavailable

from .helpers import wait_done, wait_for
from .redis_fixture import _need

pytestmark = pytest.mark.slow

# Every task below ends well within this, whatever the fault: far less than
# the 30 s lease that used to be the only way out.
BOUND = 12.0


@pytest.fixture
def redis_aof() -> Iterator[RedisServer]:
    """A redis-server that keeps its data across a kill (append-only file,
    fsync on every write), for outages that lose nothing."""
    with RedisServer(_need("redis-server"), "--appendonly", "yes", "--appendfsync", "always") as r:
        yield r


def hold_sqlite_lock(path: str, seconds: float) -> subprocess.Popen[str]:
    """Another process that holds the write lock of ``path`` for ``seconds``;
    returns once it holds it."""
    code = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "c.execute('COMMIT')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, path, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    proc.stdout.close()
    return proc


def gated_app() -> tuple[Any, threading.Event, threading.Event]:
    """An app whose /work/first waits for ``gate``; ``entered`` is set once it
    runs. Each task answers its own path."""
    gate, entered = threading.Event(), threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/work/first":
            entered.set()
            gate.wait(BOUND)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done " + path.encode()]

    return app, gate, entered


def outage_at_start_and_finish(store: Any, outage: Any) -> None:
    """Two tasks on one pool thread: the first finishes, and the second
    starts, while the store is unavailable (``outage()`` makes it so, returns
    a function that ends it). Both must end with the app's answer."""
    app, gate, entered = gated_app()
    mw = AsyncMiddleware(app, paths=["/work/*"], store=store, max_workers=1)
    try:
        client = Client(mw)
        first = client.post("/work/first").headers["Location"]
        second = client.post("/work/second").headers["Location"]
        assert entered.wait(5)
        end_outage = outage()
        gate.set()  # the first finishes now, the second starts now
        time.sleep(1.0)
        end_outage()
        started = time.monotonic()
        for location, path in ((first, b"/work/first"), (second, b"/work/second")):
            response = wait_done(client, location, timeout=BOUND)
            assert (response.status_code, response.data) == (200, b"done " + path)
        assert time.monotonic() - started < BOUND
    finally:
        gate.set()
        assert mw.close(timeout=BOUND)
    assert mw.runner.held == []


def test_redis_down_when_a_task_starts_and_when_one_finishes(redis_aof, caplog):
    def outage() -> Any:
        redis_aof.kill()
        return redis_aof.start

    outage_at_start_and_finish(redis_aof.url(0), outage)
    assert "retrying" in caplog.text  # the cause is in the log


def test_sqlite_locked_when_a_task_starts_and_when_one_finishes(tmp_path, caplog):
    path = str(tmp_path / "tasks.db")
    store = SQLiteStore(path, timeout=0.2)
    locker: list[subprocess.Popen[str]] = []

    def outage() -> Any:
        locker.append(hold_sqlite_lock(path, 1.0))
        return lambda: locker[0].wait(10)

    try:
        outage_at_start_and_finish(store, outage)
    finally:
        for proc in locker:
            proc.kill()
            proc.wait()
        store.close()
    assert "retrying" in caplog.text


@pytest.fixture
def small_disk() -> Iterator[str]:
    """A 2 MB tmpfs (needs root, as CI has)."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    directory = tempfile.mkdtemp(prefix="asyncwsgi-tmpfs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", directory], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", directory], check=True)
        os.rmdir(directory)


def test_a_result_too_big_for_the_disk_ends_the_task_at_once_with_its_cause(small_disk, caplog):
    def big(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [os.urandom(3 * 2**20)]

    store = SQLiteStore(os.path.join(small_disk, "tasks.db"), timeout=0.2)
    mw = AsyncMiddleware(big, paths=["/work/*"], store=store)
    try:
        client = Client(mw)
        started = time.monotonic()
        response = wait_done(client, client.post("/work/big").headers["Location"], timeout=BOUND)
        assert time.monotonic() - started < 5  # not the 30 s lease
        assert response.status_code == 500
        assert b"could not be stored" in response.data
        assert "could not be stored" in caplog.text
        # the store still works for results that fit
        assert mw.close(timeout=BOUND)
    finally:
        mw.close(timeout=BOUND)
        store.close()


def test_the_watchdog_outlives_a_store_error(redis_aof, caplog):
    release = threading.Event()

    def hang(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(BOUND)
        start_response("200 OK", [])
        return [b"late"]

    mw = AsyncMiddleware(hang, paths=["/work/*"], store=redis_aof.url(0), timeout=0.5)
    try:
        client = Client(mw)
        first = client.post("/work/1").headers["Location"]
        redis_aof.kill()
        time.sleep(1.5)  # the first task's timeout passes while the store is down
        redis_aof.start()
        assert wait_done(client, first, timeout=BOUND).status_code == 504
        # the watchdog still enforces timeouts afterwards
        second = client.post("/work/2").headers["Location"]
        assert wait_done(client, second, timeout=5).status_code == 504
    finally:
        release.set()
        mw.close(timeout=BOUND)


@pytest.mark.parametrize(
    "exception",
    [
        pytest.param(SystemExit(3), id="SystemExit"),
        pytest.param(KeyboardInterrupt(), id="KeyboardInterrupt"),
        pytest.param(GeneratorExit(), id="GeneratorExit"),
    ],
)
def test_any_base_exception_from_the_app_ends_its_task_and_the_pool_keeps_its_size(
    exception, caplog
):
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/work/raise":
            raise exception
        start_response("200 OK", [])
        return [b"ok"]

    mw = AsyncMiddleware(app, paths=["/work/*"], max_workers=2)
    client = Client(mw)
    for _ in range(4):  # twice the pool's size
        response = wait_done(client, client.post("/work/raise").headers["Location"])
        assert response.status_code == 500
    assert wait_done(client, client.post("/work/fine").headers["Location"], timeout=5).data == b"ok"
    alive = [t for t in threading.enumerate() if t.name.startswith("asyncwsgi-worker-")]
    assert mw.executor.threads <= 2
    assert all(t.is_alive() for t in alive)
    assert type(exception).__name__ in caplog.text
    assert mw.close(timeout=5) is True


def test_no_background_thread_dies_of_one_exception(caplog):
    """The heartbeat, the watchdog and the result retries each log a bad
    round and go on."""

    class Flaky(SQLiteStore):
        fail = 0

        def heartbeat(self, task_ids: list[str], lease_until: float) -> None:
            if self.fail:
                self.fail -= 1
                raise RuntimeError("bad round")
            super().heartbeat(task_ids, lease_until)

    caplog.set_level(logging.ERROR, logger="asyncwsgi")
    with tempfile.TemporaryDirectory() as directory:
        store = Flaky(os.path.join(directory, "t.db"))
        store.fail = 2
        release = threading.Event()

        def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            release.wait(BOUND)
            start_response("200 OK", [])
            return [b"ok"]

        mw = AsyncMiddleware(slow, paths=["/work/*"], store=store, lease=0.3)
        try:
            client = Client(mw)
            location = client.post("/work/1").headers["Location"]
            time.sleep(1.5)  # several heartbeats: two fail, the others keep the lease
            release.set()
            assert wait_done(client, location, timeout=5).data == b"ok"
            assert "heartbeat failed" in caplog.text
        finally:
            release.set()
            mw.close(timeout=5)
            store.close()


def test_a_bug_in_storing_a_result_ends_the_task_as_500_and_is_not_retried(tmp_path, caplog):
    """Only a store fault is retried: a store whose finish raises something
    else (a bug) has it logged with its traceback, and the task ends as 500
    at once rather than being retried for as long as the process lives."""

    class Buggy(SQLiteStore):
        calls: list[bytes] = []

        def finish(self, task_id: str, result: Any) -> bool:
            self.calls.append(result.body)
            if result.status.startswith("200"):
                raise TypeError("a bug in the store")
            return super().finish(task_id, result)

    caplog.set_level(logging.ERROR, logger="asyncwsgi")
    store = Buggy(str(tmp_path / "t.db"))

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    mw = AsyncMiddleware(app, paths=["/work/*"], store=store)
    try:
        client = Client(mw)
        location = client.post("/work/1").headers["Location"]
        done = wait_done(client, location, timeout=BOUND)
        assert done.status_code == 500
        assert b"could not be stored" in done.data
        # The pool thread lets go of the task just after the 500 is stored; a
        # retried result would keep it held.
        assert wait_for(lambda: mw.runner.held == [], 5.0, every=0.01), mw.runner.held
        assert mw.runner.pending_results == 0
        assert len(store.calls) == 2  # the result once, then the 500: no retry
        assert "TypeError: a bug in the store" in caplog.text  # with its traceback
    finally:
        mw.close(timeout=5)
        store.close()
