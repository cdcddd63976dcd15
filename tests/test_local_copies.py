"""A large result on Redis, once replayed, is replayed again from a local copy:
a file of the web process that the server sends with its file wrapper
(``sendfile``), with no chunk read from Redis. The copies are bounded by
``local_copies`` (bytes per process), and a copy leaves the disk when its
task is deleted or expires, in any process, whether or not anyone asks.

Through gunicorn and a real redis-server; every replay's bytes are checked
against the app's own digest.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from asyncwsgi.stores.redis import RedisStore
from asyncwsgi.task import Result, TaskRecord
from bench.services import Gunicorn
from tests import helpers
from tests.apps.large_app import digest
from tests.helpers import wait_for

APP = "tests.apps.large_app:application"
MIB = 2**20
PREFIX = "local-copies-test:"


def get(port: int, method: str, path: str, headers: dict[str, str] | None = None):
    """Status, headers and (SHA-256, length) of the body, read 1 MiB at a time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        sha, size = hashlib.sha256(), 0
        while block := response.read(MIB):
            sha.update(block)
            size += len(block)
        return response.status, dict(response.getheaders()), (sha.hexdigest(), size)
    finally:
        conn.close()


def chunk_reads(client: redis.Redis) -> int:
    """How many chunk reads (LRANGE, LINDEX) the server ran so far."""
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("lrange", "lindex"))


def stored(port: int, size: int) -> str:
    """The status URL of a finished task whose result is ``size`` bytes."""
    status, headers, _ = get(port, "POST", f"/work/big?size={size}")
    assert status == 202, status
    location = headers["Location"]

    def done() -> bool:
        code, answer, _ = get(port, "HEAD", location)
        return code != 202 or not answer.get("Location", "").endswith(location)

    wait_for(done, 60)
    return location


def copies_on_disk(tmp: Path) -> list[Path]:
    return [p for p in tmp.rglob("*.copy") if p.is_file()]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(redis_url)
    try:
        yield made
    finally:
        for key in made.scan_iter(PREFIX + "*"):
            made.delete(key)
        made.close()


def serve(redis_url: str, tmp: Path, budget: int, **env: str) -> Gunicorn:
    """One worker on the Redis store, its temporary directory ``tmp``."""
    url = f"{redis_url}?prefix={PREFIX}&local_copies={budget}"
    return Gunicorn(
        APP,
        "-w",
        "1",
        env={"ASYNCWSGI_TEST_STORE": url, "TMPDIR": str(tmp), **env},
        log=tmp / "gunicorn.log",
    )


def test_the_second_replay_reads_no_chunk_from_redis(redis_url, client, tmp_path):
    size = 8 * MIB + 123
    with serve(redis_url, tmp_path, 64 * MIB) as server:
        location = stored(server.port, size)
        before = chunk_reads(client)
        status, _, body = get(server.port, "GET", location)
        assert (status, body) == (200, (digest(size), size))
        assert chunk_reads(client) > before  # the first replay streams from Redis
        assert [p.stat().st_size for p in copies_on_disk(tmp_path)] == [size]

        before = chunk_reads(client)
        for _ in range(2):
            status, _, body = get(server.port, "GET", location)
            assert (status, body) == (200, (digest(size), size))
        # A resumed download is served from the copy too, exactly.
        status, headers, body = get(server.port, "GET", location, {"Range": "bytes=5000000-"})
        assert status == 206
        assert headers["Content-Range"] == f"bytes 5000000-{size - 1}/{size}"
        assert body == (digest(size, 5_000_000), size - 5_000_000)
        assert chunk_reads(client) == before


def test_copies_are_bounded_by_the_budget_least_recently_used_first(redis_url, client, tmp_path):
    size = 5 * MIB
    with serve(redis_url, tmp_path, 12 * MIB) as server:
        first, second, third = (stored(server.port, size) for _ in range(3))
        for location in (first, second, first, third):  # the second is now the oldest
            status, _, body = get(server.port, "GET", location)
            assert (status, body) == (200, (digest(size), size))
            held = copies_on_disk(tmp_path)
            assert sum(p.stat().st_size for p in held) <= 12 * MIB
        assert len(copies_on_disk(tmp_path)) == 2

        before = chunk_reads(client)
        for location in (first, third):
            assert get(server.port, "GET", location)[2] == (digest(size), size)
        assert chunk_reads(client) == before  # both kept
        assert get(server.port, "GET", second)[2] == (digest(size), size)
        assert chunk_reads(client) > before  # evicted: read from Redis again


def test_a_result_larger_than_the_budget_is_never_copied(redis_url, client, tmp_path):
    size = 9 * MIB
    with serve(redis_url, tmp_path, 8 * MIB) as server:
        location = stored(server.port, size)
        for _ in range(2):
            assert get(server.port, "GET", location)[2] == (digest(size), size)
        assert copies_on_disk(tmp_path) == []


def test_a_copy_leaves_the_disk_when_another_process_deletes_its_task(redis_url, client, tmp_path):
    size = 3 * MIB
    with serve(redis_url, tmp_path, 64 * MIB) as server:
        location = stored(server.port, size)
        assert get(server.port, "GET", location)[0] == 200
        assert len(copies_on_disk(tmp_path)) == 1

        other = RedisStore(redis_url, prefix=PREFIX)
        try:
            assert other.delete(location.rstrip("/").rpartition("/")[2])
        finally:
            other.close()
        assert get(server.port, "GET", location)[0] == 404  # never the copy
        # Nobody asks for it again: the copy goes by itself.
        wait_for(lambda: copies_on_disk(tmp_path) == [], 20)


def test_a_copy_leaves_the_disk_when_its_result_expires(redis_url, client, tmp_path):
    size = 3 * MIB
    env = {"ASYNCWSGI_TEST_RESULT_TTL": "2"}
    with serve(redis_url, tmp_path, 64 * MIB, **env) as server:
        location = stored(server.port, size)
        assert get(server.port, "GET", location)[0] == 200
        assert len(copies_on_disk(tmp_path)) == 1
        wait_for(lambda: copies_on_disk(tmp_path) == [], 20)
        assert get(server.port, "GET", location)[0] in (404, 410)


def test_a_store_without_local_copies_makes_no_file_and_no_thread(redis_url, client, tmp_path):
    store = RedisStore(redis_url, prefix=PREFIX)
    try:
        sink = store.open_sink("a" * 32, "result")
        data = os.urandom(3 * MIB)
        sink.write(data)
        body = sink.commit(len(data), hashlib.sha256(data).hexdigest())
        threads = {t.name for t in threading.enumerate()}
        for _ in range(2):
            assert b"".join(body.chunks(0, body.size)) == data
        assert store.bodies.copies is None
        assert {t.name for t in threading.enumerate()} <= threads | {"asyncwsgi-read-ahead"}
    finally:
        store.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with helpers.small_disk(tmp_path, "4m") as mount:
        yield mount


def test_a_disk_that_fills_while_copying_leaves_the_replay_whole(
    redis_url, client, small_disk, tmp_path
):
    size = 6 * MIB  # more than the disk holds; the budget would allow it
    url = f"{redis_url}?prefix={PREFIX}&local_copies={64 * MIB}"
    env = {"ASYNCWSGI_TEST_STORE": url, "TMPDIR": str(small_disk)}
    log = tmp_path / "gunicorn.log"
    with Gunicorn(APP, "-w", "1", env=env, log=log) as server:
        location = stored(server.port, size)
        for _ in range(2):
            status, _, body = get(server.port, "GET", location)
            assert (status, body) == (200, (digest(size), size))
        assert list(small_disk.rglob("*.copy*")) == []  # nothing half-written left
        assert shutil.disk_usage(small_disk).used < MIB
    assert "was not kept" in log.read_text()


def finished_with(store: RedisStore, task_id: str, data: bytes) -> None:
    """A task of ``store``, finished with ``data`` as its spooled result."""
    assert store.create(TaskRecord(task_id, created=time.time())).created
    sink = store.open_sink(task_id, "result")
    sink.write(data)
    body = sink.commit(len(data), hashlib.sha256(data).hexdigest())
    assert store.finish(task_id, Result("200 OK", [], body))


def test_two_first_replays_at_once_are_both_whole_and_keep_one_copy(redis_url, client, tmp_path):
    store = RedisStore(redis_url, prefix=PREFIX, local_copies=64 * MIB)
    try:
        task_id, data = "b" * 32, os.urandom(3 * MIB + 5)
        finished_with(store, task_id, data)
        readers = [store.get(task_id).result.body for _ in range(2)]
        pieces = [r.chunks(0, r.size) for r in readers]
        got: list[list[bytes]] = [[], []]
        # Interleaved, piece by piece: both are first replays.
        while any(p is not None for p in pieces):
            for i, reader in enumerate(pieces):
                if reader is not None:
                    piece = next(reader, None)
                    if piece is None:
                        pieces[i] = None
                    else:
                        got[i].append(piece)
        assert [b"".join(g) for g in got] == [data, data]
        copy = store.get(task_id).result.body.open()
        with copy:
            assert copy.read() == data
            directory = Path(copy.name).parent
        assert [p.name for p in directory.iterdir() if p.suffix == ".copy"] == [f"{task_id}.copy"]
    finally:
        store.close()
    assert not directory.exists()  # close() takes the copies with it


def test_a_first_replay_cut_short_keeps_no_copy_and_stops_its_read_ahead(
    redis_url, client, tmp_path
):
    store = RedisStore(redis_url, prefix=PREFIX, local_copies=64 * MIB)
    try:
        task_id, data = "c" * 32, os.urandom(4 * MIB)
        finished_with(store, task_id, data)

        def read_aheads() -> int:
            return sum(t.name == "asyncwsgi-read-ahead" for t in threading.enumerate())

        before = read_aheads()
        body = store.get(task_id).result.body
        replay = body.chunks(0, body.size)
        assert next(replay) == data[:MIB]
        assert read_aheads() == before + 1
        replay.close()  # the client went away
        assert wait_for(lambda: read_aheads() == before, 5)

        reads = chunk_reads(client)
        assert b"".join(body.chunks(0, body.size)) == data
        assert chunk_reads(client) > reads  # no copy was kept: read from Redis again
        reads = chunk_reads(client)
        with body.open() as copy:  # that whole replay kept one
            assert copy.read() == data
            held = list(Path(copy.name).parent.iterdir())
        assert chunk_reads(client) == reads
        assert [p.name for p in held if p.name != ".lock"] == [f"{task_id}.copy"]
    finally:
        store.close()
