"""What only the Redis store has to show: real TTLs on its keys, atomic Lua
steps under contention, waits woken by Redis, URLs, and the middleware on it.

The behaviour every store shares is in test_store_contract.py.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.stores import open_store
from asyncwsgi.stores.redis import RedisStore
from asyncwsgi.task import Result, TaskRecord
from tests.helpers import wait_done

_ids = iter(range(10**9))


def new_record(ttl: float = 300.0, owner: str | None = None) -> TaskRecord:
    return TaskRecord(
        f"r-{next(_ids)}-{time.monotonic_ns()}", created=time.time(), owner=owner, ttl=ttl
    )


def ok(body: bytes = b"hello") -> Result:
    return Result("200 OK", [("Content-Type", "text/plain")], body)


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    store = RedisStore.from_url(redis_url)
    store.client.flushdb()
    try:
        yield store
    finally:
        store.close()


def pttl(store: RedisStore, kind: str, name: str) -> int:
    return int(store.client.pttl(f"{store.prefix}{kind}:{name}"))


# -- atomicity -------------------------------------------------------------


def _race(threads: int, call: Any, *args: Any) -> list[Any]:
    """Call ``call(n, *args)`` from ``threads`` threads released at once."""
    barrier = threading.Barrier(threads)
    answers: list[Any] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        barrier.wait()
        answer = call(n, *args)
        with lock:
            answers.append(answer)

    started = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return answers


def test_finish_from_20_threads_exactly_one_wins(store: RedisStore) -> None:
    def finish(n: int, task_id: str) -> tuple[int, bool]:
        return n, store.finish(task_id, ok(str(n).encode()))

    for _ in range(5):
        record = new_record()
        assert store.create(record)
        assert store.start(record.id, time.time() + 30)
        answers = _race(20, finish, record.id)
        winners = [n for n, won in answers if won]
        assert len(answers) == 20 and len(winners) == 1
        got = store.get(record.id)
        assert got is not None and got.result == ok(str(winners[0]).encode())
        assert store.count_active() == 0


def test_start_from_20_threads_exactly_one_wins(store: RedisStore) -> None:
    record = new_record()
    assert store.create(record)
    answers = _race(20, lambda n: store.start(record.id, time.time() + 30))
    assert answers.count(True) == 1


def test_late_lost_verdict_and_late_finish_race(store: RedisStore) -> None:
    # A get judging the lease lost and the worker finishing at the same moment:
    # exactly one result is kept, and it never changes afterwards.
    for _ in range(10):
        record = new_record()
        assert store.create(record)
        assert store.start(record.id, time.time() + 0.02)
        time.sleep(0.03)
        answers = _race(2, lambda n, task_id: (n, _get_or_finish(store, n, task_id)), record.id)
        finished = [answer for n, answer in answers if n == 1]
        first = store.get(record.id)
        assert first is not None and first.state == "done" and first.result is not None
        assert (first.result == ok(b"late")) == finished[0]
        assert not store.finish(record.id, ok(b"later"))
        again = store.get(record.id)
        assert again is not None and again.result == first.result


def _get_or_finish(store: RedisStore, n: int, task_id: str) -> bool:
    if n == 0:
        store.get(task_id)
        return False
    return store.finish(task_id, ok(b"late"))


def test_full_table_reclaims_lost_workers(store: RedisStore) -> None:
    # A process that died with running tasks does not hold the limit forever.
    lost = new_record()
    assert store.create(lost, limit=1)
    assert store.start(lost.id, time.time() + 0.05)
    assert not store.create(new_record(), limit=1)
    time.sleep(0.1)
    assert store.create(new_record(), limit=1)
    got = store.get(lost.id)
    assert got is not None and got.state == "done"
    assert got.result is not None and got.result.status.startswith("500")


# -- wait --------------------------------------------------------------------


def test_wait_woken_promptly_for_every_waiter(store: RedisStore) -> None:
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, time.time() + 30)
    woken: list[float] = []
    lock = threading.Lock()

    def waiter() -> None:
        got = store.wait(record.id, 20.0)
        assert got is not None and got.state == "done"
        with lock:
            woken.append(time.monotonic())

    threads = [threading.Thread(target=waiter) for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # all of them blocked in BLMOVE by now
    finished_at = time.monotonic()
    assert store.finish(record.id, ok(b"done"))
    for thread in threads:
        thread.join(20)
    assert len(woken) == 5
    assert max(woken) - finished_at < 1.0  # far below the 20 s timeout


def test_wait_woken_by_another_store(store: RedisStore, redis_url: str) -> None:
    # Another client (as another process would be) finishes the task.
    other = RedisStore.from_url(redis_url)
    try:
        record = new_record()
        assert store.create(record)
        timer = threading.Timer(0.2, other.finish, args=(record.id, ok(b"there")))
        began = time.monotonic()
        timer.start()
        try:
            got = store.wait(record.id, 20.0)
        finally:
            timer.join()
        assert got is not None and got.result == ok(b"there")
        assert time.monotonic() - began < 2.0
    finally:
        other.close()


def test_wait_with_tiny_or_no_timeout_does_not_block(store: RedisStore) -> None:
    record = new_record()
    assert store.create(record)
    began = time.monotonic()
    for timeout in (0.0, 0.0004, -1.0):
        got = store.wait(record.id, timeout)
        assert got is not None and got.state == "queued"
    assert time.monotonic() - began < 0.5


def _finish_elsewhere(url: str, task_id: str) -> None:
    store = RedisStore.from_url(url)
    try:
        time.sleep(0.3)
        assert store.start(task_id, time.time() + 30)
        assert store.finish(task_id, ok(b"from another process"))
    finally:
        store.close()


def test_wait_woken_from_another_process(store: RedisStore, redis_url: str) -> None:
    record = new_record()
    assert store.create(record)
    process = multiprocessing.get_context("spawn").Process(
        target=_finish_elsewhere, args=(redis_url, record.id)
    )
    process.start()
    try:
        got = store.wait(record.id, 30.0)
    finally:
        process.join(30)
    assert process.exitcode == 0
    assert got is not None and got.result == ok(b"from another process")


def test_steps_run_after_the_server_lost_its_scripts(store: RedisStore) -> None:
    # A restarted server without persistence, or a new primary, has none of
    # the scripts the client ran before: the next step loads its own again.
    record = new_record()
    assert store.create(record)
    store.client.script_flush()
    assert store.start(record.id, time.time() + 30)
    store.client.script_flush()
    assert store.finish(record.id, ok())
    store.client.script_flush()
    assert store.delete(record.id)
    assert store.get(record.id) is None
    assert store.create(new_record())


# -- expiry through Redis TTLs ---------------------------------------------------


def test_keys_expire_with_redis_ttls(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, tombstone_ttl=100.0)
    try:
        store.client.flushdb()
        record = new_record(ttl=30.0, owner="owner-hash")
        assert store.create(record, key="k", fingerprint="fp")
        # Nothing of a live task expires.
        assert pttl(store, "task", record.id) == -1
        assert pttl(store, "key", "k") == -1
        assert store.start(record.id, time.time() + 30)
        assert store.finish(record.id, ok())
        task_ttl = pttl(store, "task", record.id)
        assert 29_000 < task_ttl <= 30_000
        assert 29_000 < pttl(store, "key", "k") <= 30_000
        assert 129_000 < pttl(store, "tomb", record.id) <= 130_000
        # Nobody waited for it: no wake-up list was written.
        assert pttl(store, "done", record.id) == -2
        assert store.client.zcard(store.prefix + "leases") == 0
        # Redis drops the task; the tombstone answers with its owner.
        store.client.delete(f"{store.prefix}task:{record.id}")
        got = store.get(record.id)
        assert got is not None and got.state == "expired" and got.owner == "owner-hash"
        # Redis drops the tombstone's key when tombstone_ttl has passed since
        # the task's expiry; by the store's clock its index entry ends then too.
        store.clock = lambda: time.time() + 130.5
        store.client.delete(f"{store.prefix}tomb:{record.id}")
        assert store.get(record.id) is None
    finally:
        store.close()


def test_a_tombstone_without_an_owner_is_its_place_in_the_index(redis_url: str) -> None:
    # The tombstone's key holds the owner hash: a task without an owner
    # writes none, and its entry in the index answers for it until
    # tombstone_ttl has passed after its record's expiry.
    now = [time.time()]
    store = RedisStore.from_url(redis_url, tombstone_ttl=100.0)
    store.clock = lambda: now[0]
    try:
        store.client.flushdb()
        record = new_record(ttl=30.0)
        assert store.create(record)
        assert store.start(record.id, now[0] + 30)
        assert store.finish(record.id, ok())
        assert pttl(store, "tomb", record.id) == -2
        assert store.client.zscore(store.prefix + "tombs", record.id) is not None
        # Redis drops the task (its TTL passed): the index answers 410.
        store.client.delete(f"{store.prefix}task:{record.id}")
        now[0] += 30.5
        got = store.get(record.id)
        assert got is not None and got.state == "expired" and got.owner is None
        # Past tombstone_ttl after the expiry it is forgotten, as a key
        # would have expired.
        now[0] += 100.0
        assert store.get(record.id) is None
        # A deleted task leaves no tombstone either.
        deleted = new_record(ttl=30.0)
        assert store.create(deleted) and store.finish(deleted.id, ok())
        assert store.delete(deleted.id)
        assert store.get(deleted.id) is None
    finally:
        store.close()


def test_expiry_needs_no_calls(redis_url: str) -> None:
    # Expiry is Redis's own: after the TTLs nothing of the task is left.
    store = RedisStore.from_url(redis_url, tombstone_ttl=0.2)
    try:
        store.client.flushdb()
        record = new_record(ttl=0.1)
        assert store.create(record, key="k", fingerprint="fp")
        assert store.finish(record.id, ok())
        time.sleep(0.5)
        keys = [bytes(key) for key in store.client.keys(store.prefix + "*")]  # type: ignore[arg-type]
        # The sorted sets (the tombstones' and the task list's indexes) are
        # trimmed by the next calls; no key of the task itself is left.
        indexes = (b"tombs", b"unlist", b"list::active", b"list::done")
        remaining = [key for key in keys if not key.endswith(indexes)]
        assert remaining == []
    finally:
        store.close()


# -- idempotency keys -----------------------------------------------------------


def test_a_key_from_20_threads_creates_exactly_one_task(store: RedisStore) -> None:
    answers = _race(20, lambda n: store.create(new_record(), key="contended", fingerprint=str(n)))
    created = [answer for answer in answers if answer.created]
    assert len(created) == 1
    bound = {answer.existing.task_id for answer in answers if answer.existing is not None}
    assert len(bound) == 1 and store.count_active() == 1


# -- clients, URLs, prefixes ------------------------------------------------------


def test_url_forms() -> None:
    # No connection is made until a command runs.
    for url, connection in [
        ("redis://localhost:6379/2", "Connection"),
        ("rediss://user:secret@example.invalid:6380/0", "SSLConnection"),
        ("unix:///run/redis/redis.sock?db=3", "UnixDomainSocketConnection"),
    ]:
        store = open_store(url, tombstone_ttl=5.0)
        try:
            assert isinstance(store, RedisStore)
            # The URL carries the setting for a worker that opens it.
            carried = url + ("&" if "?" in url else "?") + "tombstone_ttl=5.0"
            assert store.url == carried and store.shared
            assert store.tombstone_ttl == 5.0
            pool = store.client.connection_pool
            assert pool.connection_class.__name__ == connection
        finally:
            store.close()


def test_prefix_travels_in_the_url(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url, prefix="app1:")
    reopened = open_store(store.url or "")
    try:
        assert store.url == redis_url + "?prefix=app1%3A"
        assert isinstance(reopened, RedisStore) and reopened.prefix == "app1:"
        assert reopened.url == store.url
        record = new_record()
        assert store.create(record)
        assert reopened.get(record.id) is not None
        assert reopened.delete(record.id)
        with pytest.raises(ValueError, match="prefix"):
            RedisStore.from_url(redis_url + "?prefix=a:", prefix="b:")
    finally:
        store.close()
        reopened.close()


def test_wait_longer_than_the_clients_socket_timeout(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=0.3)
    store = RedisStore(client)
    try:
        record = new_record()
        assert store.create(record)
        timer = threading.Timer(0.8, store.finish, args=(record.id, ok(b"late")))
        timer.start()
        try:
            got = store.wait(record.id, 5.0)
        finally:
            timer.join()
        assert got is not None and got.result == ok(b"late")
        assert store.delete(record.id)
    finally:
        store.close()
        client.close()


def test_given_client_is_the_callers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        store = RedisStore(client, prefix="{other}:")
        assert store.url is None
        record = new_record()
        assert store.create(record)
        store.close()
        assert client.exists("{other}:task:" + record.id) == 1  # still usable
        client.delete("{other}:task:" + record.id, "{other}:active")
    finally:
        client.close()
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisStore(decoding)
    finally:
        decoding.close()


def test_prefixes_are_separate_tables(store: RedisStore, redis_url: str) -> None:
    other = RedisStore.from_url(redis_url, prefix="elsewhere:")
    try:
        record = new_record()
        assert store.create(record)
        assert other.get(record.id) is None
        assert other.count_active() == 0 and store.count_active() == 1
    finally:
        other.close()


# -- the middleware on Redis ---------------------------------------------------


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    time.sleep(0.2)
    body = b"report " + environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "yes")])
    return [body]


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_middleware_end_to_end(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "redis":
        redis_url = request.getfixturevalue("redis_url")
    else:
        # Every key of the table in one slot: the prefix carries a hash tag.
        redis_url = request.getfixturevalue("redis_cluster_url") + "?prefix=" + quote("{e2e}:")
    middleware = AsyncMiddleware(_app, paths=["/reports/*"], store=redis_url)
    try:
        assert isinstance(middleware.store, RedisStore)
        middleware.store.client.flushdb()
        client = Client(middleware)

        response = client.post("/reports/q3", data=b"x")
        assert response.status_code == 202
        location = response.headers["Location"]
        assert location.startswith("/status/")
        done = wait_done(client, location)
        assert done.status_code == 200
        assert done.get_data() == b"report /reports/q3"
        assert done.headers["X-App"] == "yes"

        # A second middleware on the same Redis (another process) answers too.
        other = AsyncMiddleware(_app, paths=["/reports/*"], store=redis_url)
        try:
            again = Client(other).get(location)
            assert again.status_code == 200 and again.get_data() == b"report /reports/q3"
        finally:
            other.close()
            other.store.close()

        began = time.monotonic()
        direct = client.post("/reports/q4", headers={"Prefer": "wait=5"})
        assert direct.status_code == 200
        assert direct.get_data() == b"report /reports/q4"
        assert time.monotonic() - began < 3.0

        # Long-poll of a status URL, woken by the finish.
        accepted = client.post("/reports/q5")
        assert accepted.status_code == 202
        polled = client.get(accepted.headers["Location"], headers={"Prefer": "wait=5"})
        assert polled.status_code == 200 and polled.get_data() == b"report /reports/q5"

        gone = client.delete(accepted.headers["Location"])
        assert gone.status_code == 204
        assert client.get(accepted.headers["Location"]).status_code == 404
        assert middleware.store.count_active() == 0
    finally:
        middleware.close()
        middleware.store.close()


def test_a_cluster_table_needs_a_hash_tagged_prefix(redis_cluster_url: str) -> None:
    with pytest.raises(ValueError, match="hash tag"):
        RedisStore.from_url(redis_cluster_url)
    with pytest.raises(ValueError, match="hash tag"):
        RedisStore.from_url(redis_cluster_url, prefix="{}:")  # empty: Redis ignores it
    store = RedisStore.from_url(redis_cluster_url, prefix="app:{tasks}:")
    try:
        assert store.url is not None and "prefix=app%3A%7Btasks%7D%3A" in store.url
        reopened = open_store(store.url)
        assert isinstance(reopened, RedisStore) and reopened.prefix == "app:{tasks}:"
        reopened.close()
    finally:
        store.close()


def test_closing_a_cluster_store_closes_its_connections_on_every_node(
    redis_cluster_url: str,
) -> None:
    from redis.cluster import RedisCluster

    named = redis_cluster_url + "?client_name=closing-test&prefix=" + quote("{closing}:")
    store = RedisStore.from_url(named)
    records = [new_record() for _ in range(16)]
    threads = [threading.Thread(target=store.create, args=(r,)) for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count_active() == 16

    def ours() -> int:
        with RedisCluster.from_url(redis_cluster_url.replace("redis+cluster", "redis")) as admin:
            return sum(
                info.get("name") == "closing-test"
                for node in admin.get_nodes()
                for info in admin.client_list(target_nodes=node)
            )

    assert ours() > 0
    store.close()
    assert ours() == 0


def test_the_url_carries_the_store_settings_to_a_worker(redis_url: str) -> None:
    # A Celery or RQ worker opens the store by its URL: it must keep the
    # table as the web side does (no tombstones when they are off, the same
    # chunks, the same replicas to wait for).
    settings = {
        "tombstone_ttl": 0.0,
        "max_tombstones": 5,
        "chunk_size": 1000,
        "spool_ttl": 30.0,
        "min_replicas": 1,
        "replica_timeout": 0.5,
    }
    store = RedisStore(redis_url, prefix="carried:", **settings)  # type: ignore[arg-type]
    assert store.url is not None
    worker = RedisStore.from_url(store.url)
    try:
        assert worker.prefix == "carried:"
        assert {name: getattr(worker, name) for name in settings} == settings
        # Defaults are left out; a setting already in the URL is not repeated.
        plain = RedisStore(redis_url + "?chunk_size=2000", spool_ttl=600.0)
        assert plain.url == redis_url + "?chunk_size=2000"
        plain.close()
    finally:
        worker.close()
        store.close()


def test_a_spooled_request_body_lives_with_its_task_after_a_reclaim(store: RedisStore) -> None:
    # The table is full of one lapsed task: the create is refused once, the
    # lapsed task is ended, and the create is tried again. The spooled body
    # must still be bound to its task (no expiry of its own, removed at the
    # task's finish).
    lapsed = new_record()
    lapsed.lease_until = time.time() - 1
    assert store.create(lapsed)
    record = new_record()
    sink = store.open_sink(record.id, "request")
    sink.write(b"x" * 5000)
    sink.commit(5000, "0" * 64)
    assert store.create(record, limit=1)
    assert store.get(lapsed.id).state == "done"  # type: ignore[union-attr]
    assert pttl(store, "body", f"{record.id}:request") == -1
    assert store.client.hget(f"{store.prefix}task:{record.id}", "request_body") == b"1"
    assert store.start(record.id, time.time() + 30)
    assert store.finish(record.id, ok())
    assert pttl(store, "body", f"{record.id}:request") == -2  # removed with its finish
