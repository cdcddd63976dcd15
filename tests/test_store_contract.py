"""One contract for every store: each test runs against each kind in STORES.

A new store joins by adding its id to ``STORES`` and a branch to
:func:`make_store`; nothing else here names a store.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncwsgi.results import error_result
from asyncwsgi.stores import Store, open_store
from asyncwsgi.stores.memory import MemoryStore
from asyncwsgi.stores.sqlite import SQLiteStore
from asyncwsgi.task import Callback, Result, TaskRecord
from tests.helpers import Clock

# redis-sentinel: through Sentinel, with min_replicas=1 (every step an answer
# depends on runs in a pipeline with WAIT).
STORES = ["memory", "sqlite", "redis", "redis-cluster", "redis-sentinel"]


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest, **options: Any) -> Store:
    """A new, empty store of ``kind`` with ``options`` (the MemoryStore
    keywords: max_tombstones, tombstone_ttl)."""
    if kind == "memory":
        return MemoryStore(**options)
    if kind == "sqlite":
        return SQLiteStore(str(tmp_path / "tasks.db"), **options)
    if kind in ("redis", "redis-cluster", "redis-sentinel"):
        from asyncwsgi.stores.redis import RedisStore

        if kind == "redis":
            store = RedisStore.from_url(request.getfixturevalue("redis_url"), **options)
        elif kind == "redis-sentinel":
            url = request.getfixturevalue("redis_sentinel_url")
            store = RedisStore.from_url(url, **options)
            assert store.min_replicas == 1
        else:
            url = request.getfixturevalue("redis_cluster_url")
            store = RedisStore.from_url(url, prefix="{asyncwsgi-test}:", **options)
        # The stores of one test share the db; it is emptied before the first.
        if not getattr(request.node, "_redis_flushed", False):
            request.node._redis_flushed = True
            store.client.flushdb()
        return store
    raise ValueError(f"unknown store kind {kind!r}")


StoreFactory = Callable[..., Store]


@pytest.fixture(params=STORES)
def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> Iterator[StoreFactory]:
    """Makes stores of the parametrized kind (one each call, each closed after
    the test, each reading the test's ``clock``); the sqlite ones of one test
    share their file."""
    made: list[Store] = []

    def factory(**options: Any) -> Store:
        store = make_store(request.param, tmp_path, request, **options)
        store.clock = clock
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    return store_factory()


@pytest.fixture
def pass_time(request: pytest.FixtureRequest, clock: Clock) -> Callable[[float], None]:
    """Lets ``seconds`` pass for the test's stores: the clock moves on, and
    for Redis, whose records and tombstones expire by the server's own key
    TTLs (not by the clock), the test also waits that long for real."""
    server_ttls = request.node.callspec.params["store_factory"].startswith("redis")

    def pass_(seconds: float) -> None:
        clock.advance(seconds)
        if server_ttls:
            time.sleep(seconds)

    return pass_


_counter = iter(range(10**9))


def new_record(ttl: float = 300.0, owner: str | None = None) -> TaskRecord:
    task_id = f"task-{next(_counter):06d}-{time.monotonic_ns()}"
    return TaskRecord(task_id, created=time.time(), owner=owner, ttl=ttl)


def ok(body: bytes = b"hello") -> Result:
    return Result("200 OK", [("Content-Type", "text/plain"), ("X-Two", "a, b")], body)


def run_to_done(store: Store, record: TaskRecord, result: Result | None = None) -> None:
    assert store.create(record)
    assert store.start(record.id, time.time() + 30)
    assert store.finish(record.id, result or ok())


# -- create and get ---------------------------------------------------------


def test_create_then_get(store: Store) -> None:
    record = new_record(owner="owner-hash")
    assert store.create(record)
    got = store.get(record.id)
    assert got is not None
    assert got.id == record.id
    assert got.state == "queued"
    assert got.owner == "owner-hash"
    assert got.created == pytest.approx(record.created)
    assert got.started is None and got.result is None
    assert store.get("no-such-task") is None


def test_limit_refusal_writes_nothing(store: Store) -> None:
    first, second = new_record(), new_record()
    assert store.create(first, limit=1)
    assert not store.create(second, key="k", fingerprint="f", limit=1)
    assert store.get(second.id) is None
    assert store.count_active() == 1
    # The key was not bound by the refused create.
    assert not store.create(new_record(), key="k", fingerprint="f", limit=1).existing
    # A finished task does not count against the limit.
    assert store.start(first.id, time.time() + 30)
    assert store.finish(first.id, ok())
    assert store.create(second, limit=1)


def test_limit_is_atomic_across_threads(store: Store) -> None:
    accepted: list[bool] = []
    lock = threading.Lock()

    def submit() -> None:
        for _ in range(10):
            done = bool(store.create(new_record(), limit=25))
            with lock:
                accepted.append(done)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert accepted.count(True) == 25
    assert store.count_active() == 25


def test_start_only_once_and_only_from_queued(store: Store) -> None:
    record = new_record()
    assert store.create(record)
    lease = time.time() + 30
    assert store.start(record.id, lease)
    got = store.get(record.id)
    assert got is not None and got.state == "running"
    assert got.started is not None and got.lease_until == pytest.approx(lease)
    assert not store.start(record.id, lease)
    assert store.finish(record.id, ok())
    assert not store.start(record.id, lease)
    assert not store.start("no-such-task", lease)


def test_finish_only_once(store: Store) -> None:
    record = new_record()
    run_to_done(store, record, ok(b"first"))
    assert not store.finish(record.id, ok(b"second"))
    got = store.get(record.id)
    assert got is not None and got.state == "done"
    assert got.result == ok(b"first")
    assert got.finished is not None and got.lease_until is None
    assert not store.finish("no-such-task", ok())


def test_finish_from_queued(store: Store) -> None:
    record = new_record()
    assert store.create(record)
    assert store.finish(record.id, error_result(503, "server shut down"))
    got = store.get(record.id)
    assert got is not None and got.state == "done"
    assert got.result is not None and got.result.status.startswith("503")
    assert store.count_active() == 0


def test_result_round_trips_exactly(store: Store) -> None:
    body = bytes(range(256)) * 4 + b"\x00"
    result = Result(
        "299 Custom Reason",
        [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Empty", ""), ("X-Latin", "caf\xe9")],
        body,
    )
    record = new_record()
    run_to_done(store, record, result)
    got = store.get(record.id)
    assert got is not None and got.result == result
    assert isinstance(got.result.body, bytes)
    assert all(isinstance(pair, tuple) for pair in got.result.headers)


def test_progress(store: Store) -> None:
    record = new_record()
    assert store.create(record)
    # Progress is recorded only while running.
    store.set_progress(record.id, {"done": 1, "total": 2, "message": None})
    got = store.get(record.id)
    assert got is not None and got.progress is None
    assert store.start(record.id, time.time() + 30)
    store.set_progress(record.id, {"done": 1, "total": 2, "message": "half"})
    got = store.get(record.id)
    assert got is not None
    assert got.progress == {"done": 1, "total": 2, "message": "half"}
    store.set_progress(record.id, {"done": 2.5, "total": None, "message": "é"})
    got = store.get(record.id)
    assert got is not None and got.progress == {"done": 2.5, "total": None, "message": "é"}
    store.set_progress("no-such-task", {"done": 1, "total": None, "message": None})


def test_delete(store: Store) -> None:
    record = new_record()
    assert store.create(record, key="k", fingerprint="f")
    assert store.start(record.id, time.time() + 30)
    assert not store.is_cancelled(record.id)
    assert store.delete(record.id)
    assert store.get(record.id) is None
    assert store.is_cancelled(record.id)
    assert store.count_active() == 0
    assert not store.delete(record.id)
    # Its key went with it, and a late finish writes nothing.
    again = new_record()
    assert store.create(again, key="k", fingerprint="f")
    assert store.delete(again.id)
    assert not store.finish(record.id, ok())
    assert store.get(record.id) is None


def test_is_cancelled(store: Store) -> None:
    record = new_record()
    assert store.create(record)
    assert store.is_cancelled(record.id)  # queued: not running
    assert store.start(record.id, time.time() + 30)
    assert not store.is_cancelled(record.id)
    assert store.finish(record.id, ok())
    assert store.is_cancelled(record.id)
    assert store.is_cancelled("no-such-task")


def test_heartbeat_extends_lease(store: Store, clock: Clock) -> None:
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, clock() + 30)
    later = clock() + 60
    store.heartbeat([record.id, "no-such-task"], later)
    clock.advance(31)
    got = store.get(record.id)
    assert got is not None and got.state == "running"
    assert got.lease_until == pytest.approx(later)
    store.heartbeat([], later)


# -- wait ------------------------------------------------------------------


def test_wait_returns_when_finished(store: Store) -> None:
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, time.time() + 30)

    def finish_later() -> None:
        time.sleep(0.2)
        store.finish(record.id, ok(b"waited"))

    thread = threading.Thread(target=finish_later)
    began = time.monotonic()
    thread.start()
    try:
        got = store.wait(record.id, 10.0)
    finally:
        thread.join()
    elapsed = time.monotonic() - began
    assert got is not None and got.state == "done"
    assert got.result == ok(b"waited")
    assert 0.15 < elapsed < 1.5


def test_wait_times_out(store: Store) -> None:
    record = new_record()
    assert store.create(record)
    began = time.monotonic()
    got = store.wait(record.id, 0.3)
    elapsed = time.monotonic() - began
    assert got is not None and got.state == "queued"
    assert 0.28 < elapsed < 1.5


def test_wait_on_done_or_gone_returns_at_once(store: Store) -> None:
    record = new_record()
    run_to_done(store, record)
    began = time.monotonic()
    got = store.wait(record.id, 10.0)
    assert got is not None and got.state == "done"
    assert store.wait("no-such-task", 10.0) is None
    assert time.monotonic() - began < 0.5


def test_wait_returns_when_deleted(store: Store) -> None:
    record = new_record()
    assert store.create(record)

    def delete_later() -> None:
        time.sleep(0.2)
        store.delete(record.id)

    thread = threading.Thread(target=delete_later)
    began = time.monotonic()
    thread.start()
    try:
        got = store.wait(record.id, 10.0)
    finally:
        thread.join()
    assert got is None
    assert time.monotonic() - began < 1.5


# -- expiry ------------------------------------------------------------------


def test_ttl_leaves_tombstone_then_forgets(
    store_factory: StoreFactory, clock: Clock, pass_time: Callable[[float], None]
) -> None:
    store = store_factory(tombstone_ttl=0.8)
    record = new_record(ttl=0.5, owner="owner-hash")
    assert store.create(record, key="k", fingerprint="f")
    assert store.start(record.id, clock() + 30)
    assert store.finish(record.id, ok())
    got = store.get(record.id)
    assert got is not None and got.state == "done"
    # The bound key is held while the result lives...
    held = store.create(new_record(), key="k", fingerprint="f").existing
    assert held is not None and held.task_id == record.id
    pass_time(0.6)
    got = store.get(record.id)
    assert got is not None
    assert got.state == "expired"
    assert got.owner == "owner-hash"
    assert got.result is None
    # ...and vanishes with its task's expiry.
    assert store.create(new_record(), key="k", fingerprint="f")
    assert not store.finish(record.id, ok())
    assert not store.delete(record.id)
    pass_time(0.9)
    assert store.get(record.id) is None


def test_expiry_is_seen_by_get_without_other_calls(
    store: Store, pass_time: Callable[[float], None]
) -> None:
    records = [new_record(ttl=0.1) for _ in range(5)]
    for record in records:
        run_to_done(store, record)
    pass_time(0.2)
    for record in reversed(records):
        got = store.get(record.id)
        assert got is not None and got.state == "expired"


def test_tombstones_are_bounded(
    store_factory: StoreFactory, pass_time: Callable[[float], None]
) -> None:
    store = store_factory(max_tombstones=2)
    records = [new_record(ttl=0.05 * (i + 1)) for i in range(3)]
    for record in records:
        run_to_done(store, record)
    pass_time(0.3)
    store.create(new_record())  # any call that expires
    states = []
    for record in records:
        got = store.get(record.id)
        states.append(None if got is None else got.state)
    assert states == [None, "expired", "expired"]


def test_running_and_queued_tasks_do_not_expire(
    store: Store, clock: Clock, pass_time: Callable[[float], None]
) -> None:
    queued, running = new_record(ttl=0.05), new_record(ttl=0.05)
    assert store.create(queued)
    assert store.create(running)
    assert store.start(running.id, clock() + 30)
    pass_time(0.15)
    got = store.get(queued.id)
    assert got is not None and got.state == "queued"
    got = store.get(running.id)
    assert got is not None and got.state == "running"


# -- leases ------------------------------------------------------------------


def test_lease_expiry_finishes_as_worker_lost(store: Store, clock: Clock) -> None:
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, clock() + 0.1)
    clock.advance(0.2)
    got = store.get(record.id)
    assert got is not None and got.state == "done"
    assert got.result is not None
    assert got.result.status.startswith("500")
    assert b"lost" in got.result.body
    assert store.count_active() == 0
    # The worker that was presumed lost comes back too late: nothing changes.
    assert not store.finish(record.id, ok(b"late"))
    again = store.get(record.id)
    assert again is not None and again.result == got.result


def test_queued_task_with_a_lapsed_lease_ends_as_not_started(store: Store, clock: Clock) -> None:
    # Queued in a process's own pool, which died before running it, or in a
    # broker past queue_timeout: it never ran, so 503 (safe to send again).
    record = new_record()
    record.lease_until = clock() + 0.1
    assert store.create(record)
    clock.advance(0.2)
    got = store.get(record.id)
    assert got is not None and got.state == "done"
    assert got.result is not None and got.result.status.startswith("503")
    assert b"not started in time" in got.result.body
    assert not store.start(record.id, clock() + 30)  # never runs afterwards
    assert store.count_active() == 0


def test_heartbeat_keeps_a_queued_task_alive(store: Store, clock: Clock) -> None:
    record = new_record()
    record.lease_until = clock() + 30
    assert store.create(record)
    store.heartbeat([record.id], clock() + 60)
    clock.advance(31)
    got = store.get(record.id)
    assert got is not None and got.state == "queued"
    assert store.start(record.id, clock() + 30)


def test_lease_expiry_seen_by_wait(store: Store, clock: Clock) -> None:
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, clock() + 0.2)
    # However the store wakes (the in-process one only at the timeout), what
    # wait returns after the lease has passed is the lost verdict.
    got = store.wait(record.id, 0.5)
    assert got is not None and got.state == "done"
    assert got.result is not None and got.result.status.startswith("500")


def test_finished_result_is_never_replaced_by_lost(store: Store, clock: Clock) -> None:
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, clock() + 30)
    assert store.finish(record.id, ok(b"real"))
    clock.advance(31)
    got = store.get(record.id)
    assert got is not None and got.result == ok(b"real")


# -- idempotency keys ----------------------------------------------------------


def test_create_with_a_key_is_one_atomic_step(store: Store) -> None:
    record = new_record()
    outcome = store.create(record, key="k", fingerprint="fp")
    assert outcome.created and outcome.existing is None
    # The same key again: nothing written, the bound task answered.
    other = new_record()
    again = store.create(other, key="k", fingerprint="other-fp")
    assert not again.created
    assert again.existing is not None
    assert (again.existing.task_id, again.existing.fingerprint) == (record.id, "fp")
    assert store.get(other.id) is None
    # A bound key is answered even when the table is full (a retry is no new work)...
    assert store.create(new_record(), key="k", limit=1).existing is not None
    # ...and outlives its task's finish, for as long as the result is kept.
    assert store.start(record.id, time.time() + 30)
    assert store.finish(record.id, ok())
    held = store.create(new_record(), key="k").existing
    assert held is not None and held.task_id == record.id
    # Keys are distinct; a full table refuses a new one.
    assert store.create(new_record(), key="k2", limit=1)
    full = store.create(new_record(), key="k3", limit=1)
    assert not full.created and full.existing is None


def test_a_key_from_many_threads_creates_one_task(store: Store) -> None:
    answers = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def submit(n: int) -> None:
        barrier.wait()
        answer = store.create(new_record(), key="contended", fingerprint=str(n))
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(answer.created for answer in answers) == 1
    assert len({answer.existing.task_id for answer in answers if answer.existing}) == 1
    assert store.count_active() == 1


def test_count_active(store: Store, clock: Clock) -> None:
    assert store.count_active() == 0
    a, b, c = new_record(), new_record(), new_record()
    for record in (a, b, c):
        assert store.create(record)
    assert store.count_active() == 3
    assert store.start(a.id, clock() + 30)
    assert store.count_active() == 3
    assert store.finish(a.id, ok())
    assert store.count_active() == 2
    assert store.delete(b.id)
    assert store.count_active() == 1
    assert store.start(c.id, clock() + 0.05)
    clock.advance(0.1)
    store.get(c.id)  # lease lost: finished
    assert store.count_active() == 0


def test_count_states(store: Store, clock: Clock) -> None:
    """The gauges every process reports: the whole table's queued and running
    tasks, lapsed ones counted as what they are (lost, so neither)."""
    assert store.count_states() == {"queued": 0, "running": 0}
    a, b, c, d = new_record(), new_record(), new_record(), new_record()
    for record in (a, b, c, d):
        assert store.create(record)
    assert store.start(a.id, clock() + 30)
    lapses = clock() + 1.0
    assert store.start(b.id, lapses)
    assert store.count_states() == {"queued": 2, "running": 2}
    assert store.finish(a.id, ok())
    assert store.delete(c.id)
    clock.advance(max(0.0, lapses - clock()) + 0.05)  # b's lease lapses
    assert store.count_states() == {"queued": 1, "running": 0}


def test_many_threads(store: Store) -> None:
    records = [new_record() for _ in range(200)]
    for record in records:
        assert store.create(record)
    errors: list[BaseException] = []

    def work(part: list[TaskRecord]) -> None:
        try:
            for record in part:
                assert store.start(record.id, time.time() + 30)
                store.set_progress(record.id, {"done": 1, "total": 1, "message": None})
                assert store.finish(record.id, ok(record.id.encode()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(records[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for record in records:
        got = store.get(record.id)
        assert got is not None and got.result == ok(record.id.encode())
    assert store.count_active() == 0


# -- SQLite specifics -----------------------------------------------------------


def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = SQLiteStore.from_url("sqlite:///rel.db")
    absolute = SQLiteStore.from_url("sqlite:///" + str(tmp_path / "abs.db"))
    opened = open_store("sqlite:///rel.db", tombstone_ttl=5.0)
    try:
        assert (tmp_path / "rel.db").exists() and (tmp_path / "abs.db").exists()
        assert relative.url == "sqlite:///" + str(tmp_path / "rel.db")
        assert absolute.url == "sqlite:///" + str(tmp_path / "abs.db")
        assert absolute.url.startswith("sqlite:////")
        assert isinstance(opened, SQLiteStore) and opened.tombstone_ttl == 5.0
        assert relative.shared and opened.shared
        record = new_record()
        assert relative.create(record)
        assert opened.get(record.id) is not None
    finally:
        relative.close()
        absolute.close()
        opened.close()
    for bad in ("sqlite://", "sqlite:///", "sqlite:rel.db", "postgres:///x"):
        with pytest.raises(ValueError):
            SQLiteStore.from_url(bad)
    with pytest.raises(ValueError):
        open_store("nosuch://x")


def test_sqlite_close_closes_every_thread_connection(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    threads = [threading.Thread(target=store.count_active) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    with pytest.raises(RuntimeError):
        store.count_active()


def _other_process(url: str, created_there: str, queued_here: str) -> None:
    store = SQLiteStore.from_url(url)
    try:
        record = TaskRecord(created_there, created=time.time(), owner="there")
        assert store.create(record)
        assert store.start(created_there, time.time() + 30)
        assert store.finish(created_there, ok(b"from the other process"))
        time.sleep(0.2)
        assert store.start(queued_here, time.time() + 30)
        assert store.finish(queued_here, ok(b"finished there"))
    finally:
        store.close()


def test_sqlite_two_processes(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    try:
        queued = new_record()
        assert store.create(queued)
        context = multiprocessing.get_context("spawn")
        process = context.Process(
            target=_other_process, args=(store.url, "created-there", queued.id)
        )
        process.start()
        try:
            # Finished by the other process while this one waits on it.
            got = store.wait(queued.id, 30.0)
            assert got is not None and got.state == "done"
            assert got.result == ok(b"finished there")
        finally:
            process.join(30)
        assert process.exitcode == 0
        there = store.get("created-there")
        assert there is not None and there.state == "done" and there.owner == "there"
        assert there.result == ok(b"from the other process")
        assert store.count_active() == 0
    finally:
        store.close()


def test_sqlite_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    try:
        for _ in range(20):  # a server that starts a thread per request
            thread = threading.Thread(target=store.count_active)
            thread.start()
            thread.join()
        store.count_active()
        assert len(store._connections) <= 2
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sqlite_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    try:
        record = new_record()
        assert store.create(record)  # the parent's connection is open now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # the child: uses the inherited store object
            code = 1
            try:
                if store.start(record.id, time.time() + 30) and store.finish(
                    record.id, ok(b"forked")
                ):
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        got = store.get(record.id)
        assert got is not None and got.result == ok(b"forked")
        # The parent's connection still works after the child exited.
        assert store.create(new_record())
    finally:
        store.close()


def test_a_lapsed_lease_is_reclaimed_on_submit(store: Store, clock: Clock) -> None:
    # A worker SIGKILLed with one task queued in its pool and one running: no
    # poll ever reads them, yet a full table must take new work once their
    # leases have passed.
    # Leases long enough in real time that a slow machine cannot outlive them
    # between these lines; the test clock then moves past them.
    queued, running = new_record(), new_record()
    queued.lease_until = clock() + 30
    assert store.create(queued, limit=2)
    assert store.create(running, limit=2)
    assert store.start(running.id, clock() + 30)
    assert not store.create(new_record(), limit=2)  # full while the leases hold
    clock.advance(31)
    fresh = new_record()
    assert store.create(fresh, limit=2)
    # each with the verdict of its state: never started (503), lost (500)
    for record, status in ((queued, "503"), (running, "500")):
        got = store.get(record.id)
        assert got is not None and got.state == "done"
        assert got.result is not None and got.result.status.startswith(status)
    assert store.count_active() == 1


def test_sweepers_at_once_end_each_lapsed_task_once(
    store_factory: StoreFactory, clock: Clock
) -> None:
    """``reclaim`` (the sweep every process runs, unasked): every lapsed task
    ends with the verdict of its state, its callback due once and counted
    lost once, however many callers sweep at once; a live lease is left."""
    import prometheus_client

    from asyncwsgi import metrics

    metrics.enable()  # a process that counts (metrics_path, or by hand)
    first = store_factory()
    # Shared stores: one instance per sweeper, as in several processes.
    stores = [first, store_factory(), store_factory()] if first.shared else [first] * 3
    lapsed: dict[str, str] = {}
    for i in range(24):
        record = new_record()
        record.callback = Callback(f"http://127.0.0.1:9/hooks/{i}", f"/status/{record.id}")
        if i % 2:
            record.lease_until = clock() + 0.2  # queued in a pool that died
            assert first.create(record)
            lapsed[record.id] = "503"
        else:
            assert first.create(record)
            assert first.start(record.id, clock() + 0.2)  # its worker died
            lapsed[record.id] = "500"
    alive = new_record()
    assert first.create(alive)
    assert first.start(alive.id, clock() + 60)
    clock.advance(0.3)
    lost = "asyncwsgi_tasks_lost_total"
    before = prometheus_client.REGISTRY.get_sample_value(lost) or 0.0
    ended: list[int] = []
    barrier = threading.Barrier(len(stores))

    def sweep(store: Store) -> None:
        barrier.wait(5)
        for _ in range(3):
            ended.append(store.reclaim())

    threads = [threading.Thread(target=sweep, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(ended) == len(lapsed)
    assert (prometheus_client.REGISTRY.get_sample_value(lost) or 0.0) - before == len(lapsed)
    for task_id, status in lapsed.items():
        got = first.get(task_id)
        assert got is not None and got.state == "done" and got.result is not None
        assert got.result.status.startswith(status)
    still = first.get(alive.id)
    assert still is not None and still.state == "running"
    due = first.claim_callbacks(clock(), 60, 100)
    assert sorted(d.task_id for d in due) == sorted(lapsed)
    assert {d.status for d in due} == {500, 503}


def test_count_active_applies_the_lease_rule(store: Store, clock: Clock) -> None:
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, clock() + 0.1)
    clock.advance(0.2)
    assert store.count_active() == 0  # no read of the task in between


def test_records_are_snapshots(store: Store) -> None:
    record = new_record()
    assert store.create(record)
    seen = store.get(record.id)
    assert seen is not None
    assert store.start(record.id, time.time() + 30)
    assert store.finish(record.id, ok())
    # Neither the record given to create nor one read back changes afterwards.
    assert record.state == "queued" and record.result is None
    assert seen.state == "queued" and seen.result is None


# -- idempotency through the middleware --------------------------------------


class _SlowUpload:
    """A request body that arrives in two parts, the second only once
    ``release`` is set: an upload slower than anything else going on."""

    def __init__(self, first: bytes, rest: bytes, release: threading.Event) -> None:
        self.parts = [first, rest]
        self.release = release
        self.waiting = threading.Event()  # set once the first part is read

    def read(self, size: int = -1) -> bytes:
        if not self.parts:
            return b""
        if len(self.parts) == 1:
            self.waiting.set()
            assert self.release.wait(30)
        return self.parts.pop(0)


def test_a_slow_upload_with_a_key_cannot_run_the_work_twice(store: Store) -> None:
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    from asyncwsgi import AsyncMiddleware

    runs: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        runs.append(body)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ran:" + body]

    middleware = AsyncMiddleware(app, paths=["/work/*"], store=store)

    def post(stream: Any) -> tuple[str, bytes]:
        environ = EnvironBuilder(
            path="/work/1",
            method="POST",
            headers={"Idempotency-Key": "order-7"},
            content_length=10,
        ).get_environ()
        environ["wsgi.input"] = stream
        iterable, status, _ = run_wsgi_app(middleware, environ, buffered=True)
        return status, b"".join(iterable)

    release = threading.Event()
    answers: list[tuple[str, bytes]] = []
    upload = _SlowUpload(b"hello", b"world", release)
    slow = threading.Thread(target=lambda: answers.append(post(upload)))
    try:
        slow.start()
        assert upload.waiting.wait(10)  # the first upload is under way
        # The client gave up waiting and retried; this copy arrives whole.
        fast_status, fast_body = post(_SlowUpload(b"helloworld", b"", threading.Event()))
        release.set()
        slow.join(30)
        assert fast_status.startswith("202"), fast_body
        ((slow_status, slow_body),) = answers
        assert slow_status[:3] in ("200", "202"), slow_body
        if slow_status.startswith("202"):
            assert json.loads(slow_body)["id"] == json.loads(fast_body)["id"]
        assert middleware.close(10)
    finally:
        release.set()
        slow.join(30)
        middleware.close(10)
    assert runs == [b"helloworld"]


def test_a_lapsed_task_is_cancelled_and_stays_lost(store: Store, clock: Clock) -> None:
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, clock() + 0.1)
    clock.advance(0.2)
    # The app still running it is told to stop; nothing brings it back.
    assert store.is_cancelled(record.id)
    store.heartbeat([record.id], clock() + 30)
    store.set_progress(record.id, {"done": 1, "total": None, "message": None})
    assert not store.start(record.id, clock() + 30)
    got = store.get(record.id)
    assert got is not None and got.state == "done" and got.progress is None
    assert got.result is not None and b"lost" in got.result.body
