"""``redis+sentinel://`` store URLs: what each part means, a clear error for
each mistake, and a store that finds its primary through a real Sentinel,
follows a failover by itself and waits for replicas with ``min_replicas``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from asyncwsgi.stores import StoreUnavailable, open_store
from asyncwsgi.stores.redis import RedisStore
from asyncwsgi.stores.redis.replicas import Unconfirmed
from asyncwsgi.stores.redis.sentinel import parse_sentinel_url
from asyncwsgi.task import Callback, Result, TaskRecord
from bench.services import RedisReplicated, RedisServer, TLSFiles, redis_cli
from tests.helpers import program


@pytest.mark.parametrize(
    "url, sentinels, service, db, connection, sentinel",
    [
        pytest.param(
            "redis+sentinel://10.0.0.1/tasks", [("10.0.0.1", 26379)], "tasks", 0, {"db": 0}, {},
            id="one sentinel, default port and db",
        ),
        pytest.param(
            "redis+sentinel://a:5000,b,[::1]:7/svc/3",
            [("a", 5000), ("b", 26379), ("::1", 7)], "svc", 3, {"db": 3}, {},
            id="several sentinels",
        ),
        pytest.param(
            "redis+sentinel://:secret@a/svc/1?socket_timeout=2&sentinel_password=s",
            [("a", 26379)], "svc", 1,
            {"db": 1, "password": "secret", "socket_timeout": 2.0},
            {"password": "s", "socket_timeout": 2.0},
            id="Redis's password in the userinfo, the sentinels' in the query",
        ),
        pytest.param(
            "rediss+sentinel://u:p@a/svc?ssl_cert_reqs=none",
            [("a", 26379)], "svc", 0,
            {"db": 0, "username": "u", "password": "p", "ssl": True, "ssl_cert_reqs": "none"},
            {"ssl": True, "ssl_cert_reqs": "none"},
            id="TLS to both",
        ),
    ],
)  # fmt: skip
def test_url_parts(
    url: str,
    sentinels: list[tuple[str, int]],
    service: str,
    db: int,
    connection: dict[str, Any],
    sentinel: dict[str, Any],
) -> None:
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == sentinels
    assert (parsed.service, parsed.db) == (service, db)
    assert parsed.connection == connection
    assert parsed.sentinel == sentinel


@pytest.mark.parametrize(
    "url, message",
    [
        pytest.param("redis+sentinel:///svc", "at least one sentinel", id="no host"),
        pytest.param("redis+sentinel://a/", "path is /<service name>", id="no service"),
        pytest.param("redis+sentinel://a/svc/0/1", "path is /<service name>", id="long path"),
        pytest.param("redis+sentinel://a/svc/x", "database .* is a number", id="db not a number"),
        pytest.param("redis+sentinel://a:x/svc", "no valid port", id="bad port"),
        pytest.param("redis+sentinel://a/svc/1?db=2", "different databases", id="two dbs"),
        pytest.param("redis+sentinel://a/svc?socket_timeout=abc", "socket_timeout", id="bad value"),
    ],
)
def test_url_mistakes(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sentinel_url(url)


def test_the_store_keeps_its_settings_in_a_sentinel_url() -> None:
    """prefix= and the store's settings are the store's, the rest redis-py's;
    the URL (what a worker opens) keeps them all. No server is needed: the
    client asks a sentinel for the primary only when it connects."""
    url = "redis+sentinel://127.0.0.1:1/svc/2?socket_timeout=2&prefix=app%3A&min_replicas=1"
    store = open_store(url)
    try:
        assert isinstance(store, RedisStore)
        assert (store.prefix, store.min_replicas, store.url) == ("app:", 1, url)
        kwargs = store.client.connection_pool.connection_kwargs
        assert (kwargs["db"], kwargs["socket_timeout"]) == (2, 2.0)
        assert "prefix" not in kwargs and "min_replicas" not in kwargs
        with pytest.raises(StoreUnavailable):  # no sentinel there: a 503, not a 500
            store.get("anything")
    finally:
        store.close()


def test_the_constructor_reads_the_settings_in_its_url_as_open_store_does() -> None:
    """RedisStore(url) once dropped ?min_replicas=1 while its url, which a
    worker opens, kept it: the two sides disagreed, silently."""
    url = "redis+sentinel://127.0.0.1:1/svc/2?socket_timeout=2&min_replicas=1"
    store = RedisStore(url, chunk_size=2**16)
    try:
        assert (store.min_replicas, store.chunk_size) == (1, 2**16)
        base, _, query = store.url.partition("?")
        assert base == url.partition("?")[0]
        carried = sorted(query.split("&"))
        assert carried == ["chunk_size=65536", "min_replicas=1", "socket_timeout=2"]
    finally:
        store.close()
    with pytest.raises(ValueError, match="min_replicas: 2 as a keyword, 1 in the store URL"):
        RedisStore(url, min_replicas=2)


def test_min_replicas_mistakes_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        open_store("redis+sentinel://127.0.0.1:1/svc?min_replicas=-1")
    with pytest.raises(ValueError, match="replica_timeout"):
        # The WAIT would outlive the socket: refused before any call.
        RedisStore("redis://127.0.0.1:1/0?socket_timeout=1", min_replicas=1, replica_timeout=2)


def test_without_replicas_nothing_is_accepted(caplog: pytest.LogCaptureFixture) -> None:
    """min_replicas on a Redis that has no replica: a warning at start, and
    every submission refused (its record removed), never acknowledged."""
    with RedisServer(program("redis-server")) as server:
        store = open_store(server.url(0) + "?min_replicas=1&replica_timeout=0.2")
        try:
            assert "0 replica(s) connected and min_replicas is 1" in caplog.text
            with pytest.raises(Unconfirmed):
                store.create(record("alone"))
            assert store.get("alone") is None
        finally:
            store.close()


def record(task_id: str) -> TaskRecord:
    now = time.time()
    return TaskRecord(task_id, created=now, ttl=60, lease_until=now + 30)


@pytest.mark.slow
def test_through_sentinel_a_write_waits_for_its_replica() -> None:
    """A stopped replica: the submission is refused and its record removed; a
    result stays unconfirmed (and is tried again) until the replica is back;
    a second try of a result already on the primary still waits for it; a
    deletion and a callback claim are refused too."""
    with RedisReplicated(1, program("redis-server"), program("redis-cli")) as group:
        store = open_store(group.url(0, "socket_timeout=3&min_replicas=1&replica_timeout=0.5"))
        try:
            assert isinstance(store, RedisStore) and store.min_replicas == 1
            assert store.create(record("kept"))
            assert store.start("kept", time.time() + 30)
            assert store.create(record("deleted"))
            called = record("called")
            called.callback = Callback("http://127.0.0.1:9/hook", "/status/called")
            assert store.create(called)
            assert store.finish("called", Result("200 OK", [], b"done"))

            group.replicas[0].pause()
            with pytest.raises(Unconfirmed):
                store.delete("deleted")
            with pytest.raises(Unconfirmed):
                store.claim_callbacks(time.time(), 30, 10)
            with pytest.raises(Unconfirmed):
                store.create(record("refused"))
            assert store.get("refused") is None  # removed, never to run
            with pytest.raises(StoreUnavailable):
                store.finish("kept", Result("200 OK", [], b"done"))
            # On the primary now; a retry writes nothing new, and still waits.
            with pytest.raises(StoreUnavailable):
                store.finish("kept", Result("200 OK", [], b"done"))

            group.replicas[0].resume()
            assert store.finish("kept", Result("200 OK", [], b"done")) is False
            replica = redis_cli(group.replicas[0].port, "hget", "asyncwsgi:task:kept", "body")
            assert replica.strip() == "done"
        finally:
            store.close()


@pytest.mark.slow
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "TLS"])
def test_through_sentinel_the_store_follows_a_failover(tls: bool, tmp_path: Path) -> None:
    """The primary killed: 503 while there is none, then on by itself with
    the promoted replica, whose data has what was confirmed. With TLS, the
    store speaks it to the sentinel and to each primary (rediss+sentinel://,
    only TLS ports named), replication and Sentinel too."""
    files = TLSFiles(tmp_path, program("openssl")) if tls else None
    with RedisReplicated(2, program("redis-server"), program("redis-cli"), tls=files) as group:
        url = group.url(0, "socket_timeout=2&min_replicas=1")
        assert url.startswith("rediss+sentinel://" if tls else "redis+sentinel://")
        if tls:  # the sentinel names the primary's TLS port: a plain client would fail
            assert group.sentinel is not None
            assert group.sentinel.primary_port() == group.tls_ports[group.primary.port]
        store = open_store(url)
        try:
            assert store.create(record("before"))
            group.primary.kill()
            with pytest.raises(StoreUnavailable):
                store.get("before")
            group.wait_failover()
            deadline = time.monotonic() + 15
            while True:
                try:
                    found = store.get("before")
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "not back 15 s after the failover"
                    time.sleep(0.2)
            assert found is not None and found.state == "queued"
            deadline = time.monotonic() + 15
            while True:  # until the other replica follows the new primary
                try:
                    assert store.create(record("after"))
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "no replica confirmed within 15 s"
                    time.sleep(0.2)
        finally:
            store.close()
