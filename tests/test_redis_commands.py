"""Pay only for what you use, on Redis: the store commands of one task cycle
(submit, run, one read of the result), counted by a real redis-server's
``INFO stats`` (the commands inside scripts included).

The number with every optional feature off is pinned: a feature that starts
to cost when it is off fails here. Each feature's own cost is pinned beside
it, so that a change in it is seen too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.executors import ThreadExecutor
from bench.services import RedisServer
from tests.redis_fixture import _need

#: create (EVALSHA, ZCARD, HSET, ZADD), start (EVALSHA, HMGET, HSET, ZADD),
#: finish (EVALSHA, HMGET, HSET, PEXPIRE, ZREM) and the read of the result
#: (HGETALL).
ALL_OFF = 14

#: What each feature adds to a cycle when it is on.
FEATURES: list[Any] = [
    # The tombstone's place in its index (ZADD) and the bound on them
    # (ZCOUNT); a task without an owner needs no key of its own.
    pytest.param({"tombstone_ttl": 3600.0}, {}, 2, id="tombstones"),
    # Entering the list of active tasks (ZADD), leaving it for the done ones
    # (ZREM, ZADD), the expiry of the list (ZADD, ZRANGEBYSCORE); starting
    # costs the list nothing.
    pytest.param({"list_tasks": True}, {}, 5, id="list_tasks"),
    # The key's binding (GET, SET) and its expiry with the task (PEXPIRE).
    pytest.param({}, {"Idempotency-Key": "k"}, 3, id="idempotency_key"),
    # The reap of bodies past their time (ZRANGEBYSCORE), the budget (GET),
    # a writer waiting for room (EXISTS).
    pytest.param({"max_stored_bytes": 2**30}, {}, 3, id="max_stored_bytes"),
]


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer(_need("redis-server")) as started:
        yield started


def commands(server: RedisServer, options: dict[str, Any], headers: dict[str, str]) -> int:
    """The fewest store commands of one cycle in three (a sweep of lapsed
    leases, every few seconds, only ever adds to one)."""
    executor = ThreadExecutor(1)
    middleware = AsyncMiddleware(
        app,
        paths=["/work"],
        store=server.url(0),
        executor=executor,
        **{"tombstone_ttl": 0.0, **options},
    )
    counter = redis.Redis.from_url(server.url(0))
    try:
        client = Client(middleware)
        counts = []
        for n in range(4):
            sent = {name: f"{value}-{n}" for name, value in headers.items()}
            before = int(counter.info("stats")["total_commands_processed"])
            response = client.post("/work", headers=sent)
            assert response.status_code == 202, response.data
            deadline = time.monotonic() + 30
            while executor.unfinished:  # (asks this process, not Redis)
                assert time.monotonic() < deadline, "the task did not end"
                time.sleep(0.001)
            done = client.get(response.headers["Location"])
            assert done.status_code == 200 and done.data == b"done"
            after = int(counter.info("stats")["total_commands_processed"])
            if n:  # the first loads the scripts
                counts.append(after - before - 1)  # the first INFO counts itself
        return min(counts)
    finally:
        middleware.close(10)
        counter.close()


def test_a_cycle_with_every_optional_feature_off(server: RedisServer) -> None:
    assert commands(server, {}, {}) == ALL_OFF


@pytest.mark.parametrize(("options", "headers", "cost"), FEATURES)
def test_what_each_feature_costs_when_on(
    server: RedisServer, options: dict[str, Any], headers: dict[str, str], cost: int
) -> None:
    assert commands(server, options, headers) == ALL_OFF + cost
