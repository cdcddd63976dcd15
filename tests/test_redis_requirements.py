"""What the Redis store needs from its server (docs/stores.md), and the warning
at start when a real redis-server is configured to evict keys."""

from __future__ import annotations

import logging

import pytest

from asyncwsgi.stores.redis import RedisStore
from bench.services import RedisServer
from tests.redis_fixture import _need


def warnings_about_eviction(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.message
        for r in caplog.records
        if r.name == "asyncwsgi"
        and r.levelno == logging.WARNING
        and "maxmemory-policy" in r.message
    ]


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_redis_is_warned_about_at_start(
    policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer(_need("redis-server"), "--maxmemory-policy", policy) as server:
        store = RedisStore.from_url(server.url(0))
        store.close()
    (message,) = warnings_about_eviction(caplog)
    assert policy in message and "noeviction" in message


def test_noeviction_is_not_warned_about(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = RedisStore.from_url(redis_url)  # redis-server's default: noeviction
    store.close()
    assert warnings_about_eviction(caplog) == []


def test_a_redis_down_at_start_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(_need("redis-server")) as server:
        url = server.url(0)
    store = RedisStore.from_url(url)  # nothing listens: checked later, by use
    store.close()
    assert warnings_about_eviction(caplog) == []


def test_a_cluster_is_checked_node_by_node(
    redis_cluster_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore.from_url(redis_cluster_url, prefix="{asyncwsgi-test}:")
    try:
        assert warnings_about_eviction(caplog) == []
        # The node serving the table switched to an evicting policy is named
        # at the next start.
        node = store.client.get_node_from_key(store.prefix + "active")
        store.client.config_set("maxmemory-policy", "allkeys-lfu", target_nodes=node)
        try:
            again = RedisStore.from_url(redis_cluster_url, prefix="{asyncwsgi-test}:")
            again.close()
        finally:
            store.client.config_set("maxmemory-policy", "noeviction", target_nodes=node)
        (message,) = warnings_about_eviction(caplog)
        assert "allkeys-lfu" in message
    finally:
        store.close()
