"""Each thread's commands keep one Redis connection (its lane) instead of
taking one from the pool and giving it back around every command: checked
against a real redis-server for what the pool did for us, a restart noticed
before the next command, a thread's connection given back when it ends, and
a forked child that never writes on its parent's socket."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator

import pytest

from asyncwsgi.stores.redis import RedisStore
from asyncwsgi.task import Result, TaskRecord
from bench.services import RedisServer
from tests.redis_fixture import _need


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(_need("redis-server")) as started:
        yield started


@pytest.fixture
def store(server: RedisServer) -> Iterator[RedisStore]:
    opened = RedisStore(server.url(0))
    try:
        yield opened
    finally:
        opened.close()


def _cycle(store: RedisStore, name: str) -> None:
    """One task created, started and finished: three steps on this thread."""
    store.create(TaskRecord(name, created=time.time(), owner=None, ttl=60.0))
    assert store.start(name, time.time() + 30)
    assert store.finish(name, Result("200 OK", [], name.encode()))


def _connected(store: RedisStore) -> int:
    clients = store.client.info("clients")
    return int(clients["connected_clients"])


def test_a_thread_runs_its_commands_on_one_connection(store: RedisStore) -> None:
    _cycle(store, "warm")
    ids = {int(store._connection.lane.client_id()) for _ in range(20)}
    assert len(ids) == 1
    other: set[int] = set()
    thread = threading.Thread(target=lambda: other.add(int(store._connection.lane.client_id())))
    thread.start()
    thread.join(10)
    assert other and other.isdisjoint(ids)


def test_a_restart_between_two_commands_costs_no_command(
    server: RedisServer, store: RedisStore
) -> None:
    _cycle(store, "before")
    server.kill()
    server.start()  # no command ran meanwhile: the lane's socket is stale
    _cycle(store, "after")
    record = store.get("after")
    assert record is not None and record.state == "done"


def test_threads_that_end_give_their_connections_back(store: RedisStore) -> None:
    _cycle(store, "main")
    start = _connected(store)
    for n in range(30):  # one after another, as a server's short-lived threads
        thread = threading.Thread(target=_cycle, args=(store, f"t{n}"))
        thread.start()
        thread.join(10)
    # Each ended thread's connection went back to the pool and the next
    # thread took it: not one connection per thread that ever ran.
    assert _connected(store) <= start + 2
    assert all(store.get(f"t{n}").state == "done" for n in range(30))  # type: ignore[union-attr]


def _child(store: RedisStore, done: multiprocessing.Queue[str]) -> None:
    try:
        _cycle(store, "child")
        done.put("ok")
    except BaseException as exc:  # the parent asserts on what it reads
        done.put(repr(exc))


def test_a_forked_child_makes_its_own_connection(store: RedisStore) -> None:
    _cycle(store, "parent-before")
    parent_id = int(store._connection.lane.client_id())
    fork = multiprocessing.get_context("fork")
    done: multiprocessing.Queue[str] = fork.Queue()
    child = fork.Process(target=_child, args=(store, done))
    child.start()
    assert done.get(timeout=20) == "ok"
    child.join(10)
    assert child.exitcode == 0
    # The parent's connection was not written on by the child: its
    # commands still get their own answers, on the same connection.
    _cycle(store, "parent-after")
    assert int(store._connection.lane.client_id()) == parent_id
    assert store.get("child").state == "done"  # type: ignore[union-attr]


def test_green_threads_keep_the_pool(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # What gevent's and eventlet's monkey patching does to threading.local:
    # a local of their own, per greenlet. A lane per greenlet would hold a
    # connection for every idle keep-alive client, so the store keeps the
    # pool: every command takes a connection and gives it back.
    class GreenLocal(threading.local):
        pass

    monkeypatch.setattr(threading, "local", GreenLocal)
    store = RedisStore(server.url(0))
    try:
        _cycle(store, "green")
        assert store._connection.lane is store.client
    finally:
        store.close()
