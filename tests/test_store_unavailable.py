"""An unavailable store answers 503 with Retry-After, logs one line, and the
service recovers by itself when the store is back: a real redis-server killed
and restarted, a real SQLite write lock held by another process, a real full
disk (a small tmpfs)."""

from __future__ import annotations

import logging
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from asyncwsgi import AsyncMiddleware
from asyncwsgi.stores import SQLiteStore, StoreFull, StoreUnavailable
from asyncwsgi.task import Result, TaskRecord
from bench.services import RedisServer
from tests.helpers import unavailable, wait_done
from tests.redis_fixture import _need


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"echo:" + body]


def assert_503(response: TestResponse) -> None:
    assert response.status_code == 503, response.data
    assert int(response.headers["Retry-After"]) >= 1
    assert response.mimetype == "text/plain"
    assert b"unavailable" in response.data


def store_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "asyncwsgi" and "unavailable" in r.message]


@pytest.mark.slow
def test_redis_killed_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    # Persisted at every write, so what was accepted before the crash is there after.
    server = RedisServer(_need("redis-server"), "--appendonly", "yes", "--appendfsync", "always")
    with server:
        middleware = AsyncMiddleware(echo, paths=["/work/*"], store=server.url(0))
        try:
            client = Client(middleware)
            before = client.post("/work/1", data=b"before")
            assert before.status_code == 202
            location = before.headers["Location"]
            assert wait_done(client, location).data == b"echo:before"

            server.kill()
            caplog.clear()
            assert_503(client.post("/work/2", data=b"during"))
            assert_503(client.get(location))
            assert_503(client.post("/work/3", data=b"k", headers={"Idempotency-Key": "k"}))
            lines = store_lines(caplog)
            assert len(lines) == 3
            assert all(line.exc_info is None for line in lines)  # no traceback

            server.start()  # the same port: the client reconnects by itself
            assert client.get(location).data == b"echo:before"
            after = client.post("/work/4", data=b"after")
            assert after.status_code == 202
            assert wait_done(client, after.headers["Location"]).data == b"echo:after"
        finally:
            middleware.close(10)


_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def test_sqlite_locked_by_another_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tasks.db"
    store = SQLiteStore(str(path), timeout=0.2)
    middleware = AsyncMiddleware(echo, paths=["/work/*"], store=store)
    holder = None
    try:
        client = Client(middleware)
        before = client.post("/work/1", data=b"before")
        location = before.headers["Location"]
        assert wait_done(client, location).data == b"echo:before"

        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        caplog.clear()
        assert_503(client.post("/work/2", data=b"during"))
        lines = store_lines(caplog)
        assert len(lines) == 1 and lines[0].exc_info is None
        assert "database is locked" in lines[0].message
        # Readers are not blocked by the writer (WAL): polls still answer.
        assert client.get(location).data == b"echo:before"

        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(10) == 0
        after = client.post("/work/3", data=b"after")
        assert after.status_code == 202
        assert wait_done(client, after.headers["Location"]).data == b"echo:after"
    finally:
        if holder is not None:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
            for stream in (holder.stdin, holder.stdout):
                if stream is not None:
                    stream.close()
        middleware.close(10)
        store.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, mounted for the test (needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        message = f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}"
        unavailable(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> None:
    with open(directory / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass


def test_sqlite_on_a_full_disk(small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteStore(str(small_disk / "tasks.db"), timeout=0.2)
    middleware = AsyncMiddleware(echo, paths=["/work/*"], store=store)
    try:
        client = Client(middleware)
        before = client.post("/work/1", data=b"before")
        location = before.headers["Location"]
        assert wait_done(client, location).data == b"echo:before"
        _fill(small_disk)
        with pytest.raises(StoreFull):  # the store says which fault it is...
            for _ in range(50):  # (pages already in the file may take a few rows)
                store.create(TaskRecord(secrets.token_hex(8), created=time.time()))
        caplog.clear()
        assert_503(client.post("/work/2", data=b"during"))  # ...the client gets 503
        assert client.get(location).data == b"echo:before"
        (small_disk / "filler").unlink()
        after = client.post("/work/3", data=b"after")
        assert after.status_code == 202
        assert wait_done(client, after.headers["Location"]).data == b"echo:after"
    finally:
        middleware.close(10)
        store.close()


def test_store_full_is_a_store_unavailable() -> None:
    assert issubclass(StoreFull, StoreUnavailable)


def test_a_redis_that_stops_answering_is_a_503_not_a_hang(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from asyncwsgi.stores.redis import RedisStore

    with RedisServer(_need("redis-server")) as server:
        # The store's own client times out (10 s unless the URL says otherwise).
        default = RedisStore.from_url(server.url(0))
        assert default.client.connection_pool.connection_kwargs["socket_timeout"] == 10.0
        default.close()
        middleware = AsyncMiddleware(
            echo, paths=["/work/*"], store=server.url(0) + "?socket_timeout=0.5"
        )
        try:
            client = Client(middleware)
            before = client.post("/work/1", data=b"before")
            location = before.headers["Location"]
            assert wait_done(client, location).data == b"echo:before"
            server.proc.send_signal(signal.SIGSTOP)  # accepts connections, never answers
            try:
                began = time.monotonic()
                assert_503(client.post("/work/2", data=b"during"))
                assert_503(client.get(location))
                assert time.monotonic() - began < 5
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert client.get(location).data == b"echo:before"
        finally:
            middleware.close(10)


def test_sqlite_reads_do_not_wait_for_another_process_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = SQLiteStore(str(path), timeout=2.0)
    holder = None
    try:
        due, kept = (
            TaskRecord(secrets.token_hex(8), created=time.time(), ttl=t) for t in (0.05, 300)
        )
        for record in (due, kept):
            assert store.create(record)
            assert store.start(record.id, time.time() + 30)
            assert store.finish(record.id, Result("200 OK", [], b"ok"))
        time.sleep(0.1)  # due's result has expired: a read would tidy it up
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        began = time.monotonic()
        got = store.get(kept.id)
        assert got is not None and got.state == "done"
        gone = store.get(due.id)
        assert gone is not None and gone.state == "expired"
        assert time.monotonic() - began < 1.0  # not the busy timeout
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
            for stream in (holder.stdin, holder.stdout):
                if stream is not None:
                    stream.close()
        store.close()


@pytest.mark.slow
def test_through_gunicorn_redis_down_is_a_plain_503_and_one_log_line(tmp_path: Path) -> None:
    from tests.test_gunicorn_shared import call, gunicorn

    with RedisServer(_need("redis-server")) as server:
        with gunicorn(tmp_path, server.url(0), ["-w", "2"]) as (port, _):
            status, headers, _body = call(port, "POST", "/work/1", b"before")
            assert status == 202
            location = headers["Location"]
            server.kill()
            try:
                answers = [
                    call(port, "POST", "/work/2", b"during"),
                    call(port, "GET", location),
                ]
            finally:
                server.start()
            for status, headers, body in answers:
                assert status == 503, body
                assert headers["Retry-After"] == "1"
                assert headers["Content-Type"].startswith("text/plain")
                assert b"unavailable" in body and b"<html" not in body.lower()
            # Back by itself: the same processes answer again.
            status, headers, _body = call(port, "POST", "/work/3", b"after")
            assert status == 202
        log = next(tmp_path.glob("gunicorn-*.log")).read_text(errors="replace")
    lines = [line for line in log.splitlines() if "task store is unavailable" in line]
    assert len(lines) == 2, log
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_an_app_reporting_progress_outlives_a_redis_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def reporting(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        task = environ["asyncwsgi.task"]
        for step in range(40):  # about 2 s, through the outage
            task.set_progress(step, 40)
            if task.cancelled:
                start_response("409 Conflict", [])
                return [b"cancelled"]
            time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"finished"]

    server = RedisServer(_need("redis-server"), "--appendonly", "yes", "--appendfsync", "always")
    with server:
        middleware = AsyncMiddleware(
            reporting, paths=["/work/*"], store=server.url(0) + "?socket_timeout=0.5"
        )
        try:
            client = Client(middleware)
            location = client.post("/work/1").headers["Location"]
            time.sleep(0.3)
            server.kill()
            time.sleep(1.0)
            server.start()
            done = wait_done(client, location, timeout=30)
            assert (done.status_code, done.data) == (200, b"finished")
            # The app was not told about the outage; the log was, once.
            lines = [r for r in caplog.records if "progress" in r.message]
            assert 1 <= len(lines) <= 2 and all(r.exc_info is None for r in lines)
        finally:
            middleware.close(10)


def _every_call(store: Any) -> dict[str, Any]:
    record = TaskRecord(secrets.token_hex(8), created=time.time())
    result = Result("200 OK", [], b"")
    return {
        "create": lambda: store.create(record, key="k", fingerprint="f", limit=10),
        "get": lambda: store.get(record.id),
        "start": lambda: store.start(record.id, time.time() + 30),
        "heartbeat": lambda: store.heartbeat([record.id], time.time() + 30),
        "set_progress": lambda: store.set_progress(record.id, {"done": 1}),
        "finish": lambda: store.finish(record.id, result),
        "delete": lambda: store.delete(record.id),
        "is_cancelled": lambda: store.is_cancelled(record.id),
        "count_active": lambda: store.count_active(),
        "wait": lambda: store.wait(record.id, 0.1),
    }


def test_every_call_on_an_unreachable_redis_raises_store_unavailable() -> None:
    from asyncwsgi.stores.redis import RedisStore

    with RedisServer(_need("redis-server")) as server:
        url = server.url(0)
    store = RedisStore.from_url(url)  # nothing listens there any more
    try:
        for name, call in _every_call(store).items():
            with pytest.raises(StoreUnavailable) as caught:
                call()
            assert "Redis" in str(caught.value), name
    finally:
        store.close()


def test_every_write_on_a_locked_sqlite_raises_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = SQLiteStore(str(path), timeout=0.1)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        calls = _every_call(store)
        for name in ("create", "start", "heartbeat", "set_progress", "finish", "delete"):
            with pytest.raises(StoreUnavailable, match="database is locked"):
                calls[name]()
        # Reads do not need the lock (WAL).
        assert calls["get"]() is None and calls["count_active"]() == 0
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
        store.close()
