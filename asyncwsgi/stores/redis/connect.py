"""How the Redis store reaches Redis: its URL (with the store's own
``prefix=``), the client made from it, and the checks made at start."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from ..settings import split_url

__all__ = ["DEFAULT_PREFIX", "Connection", "block_limit", "close", "connect", "warn_if_evicting"]

logger = logging.getLogger("asyncwsgi")

DEFAULT_PREFIX = "asyncwsgi:"
# For the clients the store makes from a URL (the URL's own socket_timeout=
# and socket_connect_timeout= win): a Redis that stopped answering (stopped,
# partitioned) is a 503 after this long, not a request that hangs for ever.
TIMEOUTS = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}


@dataclass(frozen=True)
class Connection:
    """A client, the URL another process opens the same table by (None for a
    client given by the caller), the prefix, and whether the store closes
    the client."""

    client: redis.Redis | RedisCluster
    url: str | None
    prefix: str
    owns_client: bool


def split_prefix(url: str) -> tuple[str, str | None]:
    """The URL without its ``prefix=`` query parameter (ours, not redis-py's),
    and that prefix."""
    # The stores' own settings (chunk_size=...) come as keywords too (open_store).
    url = split_url(url)[0]
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    if not prefixes:
        return url, None
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefixes[-1]


def connection_kwargs(client: redis.Redis | RedisCluster) -> dict[str, Any]:
    if isinstance(client, RedisCluster):
        kwargs: dict[str, Any] = client.nodes_manager.connection_kwargs
    else:
        kwargs = client.connection_pool.connection_kwargs
    return kwargs


def check_cluster_prefix(prefix: str) -> None:
    # Redis hashes only what is between the first '{' and the next '}', when
    # that is not empty (the cluster specification's hash tags).
    start = prefix.find("{")
    if start < 0 or prefix.find("}", start + 1) <= start + 1:
        raise ValueError(
            f"in Redis Cluster the prefix needs a hash tag, such as '{{asyncwsgi}}:', so "
            f"that every key of the table lives in one slot; {prefix!r} has none"
        )


def connect(client_or_url: redis.Redis | RedisCluster | str, prefix: str) -> Connection:
    """The connection for a client or a URL (see :class:`RedisStore`)."""
    if not isinstance(client_or_url, str):
        if connection_kwargs(client_or_url).get("decode_responses"):
            raise ValueError("RedisStore needs a client with decode_responses=False")
        if isinstance(client_or_url, RedisCluster):
            check_cluster_prefix(prefix)
        return Connection(client_or_url, None, prefix, owns_client=False)
    connect_url, url_prefix = split_prefix(client_or_url)
    if url_prefix is not None:
        if prefix not in (DEFAULT_PREFIX, url_prefix):
            raise ValueError("the URL's prefix= and the prefix keyword differ")
        prefix = url_prefix
    # The URL another process (a Celery worker) opens the same table by.
    url = client_or_url
    if url_prefix is None and prefix != DEFAULT_PREFIX:
        separator = "&" if urlsplit(client_or_url).query else "?"
        url = f"{client_or_url}{separator}{urlencode({'prefix': prefix})}"
    scheme, _, rest = connect_url.partition(":")
    client: redis.Redis | RedisCluster
    if scheme.lower().endswith("+cluster"):
        check_cluster_prefix(prefix)  # before a client exists to be closed
        client = RedisCluster.from_url(
            scheme[: -len("+cluster")] + ":" + rest, decode_responses=False, **TIMEOUTS
        )
    else:
        client = redis.Redis.from_url(connect_url, decode_responses=False, **TIMEOUTS)
    return Connection(client, url, prefix, owns_client=True)


def block_limit(client: redis.Redis | RedisCluster) -> float | None:
    """The longest a blocking call may wait: a client with a socket timeout
    would give up on a longer BLMOVE (and Redis ends a block up to a tick,
    100 ms, late). None: no bound."""
    socket_timeout = connection_kwargs(client).get("socket_timeout")
    if not socket_timeout:
        return None
    timeout = float(socket_timeout)
    return round(max(timeout / 2, timeout - 0.25, 0.001), 3)


def warn_if_evicting(client: redis.Redis | RedisCluster, prefix: str) -> None:
    """Warn when the server may evict keys: an evicted task is a 202 that
    turns into a 404 (docs/stores.md says what the store needs)."""
    try:
        if isinstance(client, RedisCluster):
            # The table is in one slot: the node that serves it is the one.
            # (Called through Any: redis-py releases differ on whether
            # this method is annotated, so no one ignore fits them all.)
            cluster: Any = client
            node = cluster.get_node_from_key(prefix + "active")
            info: dict[str, Any] = client.info("memory", target_nodes=node)
        else:
            info = client.info("memory")
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        # Down at start: the calls will say so.
        logger.debug("asyncwsgi: could not read Redis's maxmemory-policy: %s", exc)
        return
    # A cluster may answer per node ({"host:port": {...}}), a server directly.
    nodes = [info] if "maxmemory_policy" in info else list(info.values())
    policies = {str(node.get("maxmemory_policy", "noeviction")) for node in nodes}
    for policy in sorted(policies - {"noeviction"}):
        logger.warning(
            "asyncwsgi: Redis runs with maxmemory-policy %s, which can evict the "
            "store's keys (an accepted task then answers 404); use "
            "maxmemory-policy noeviction for the task store",
            policy,
        )


def close(client: redis.Redis | RedisCluster) -> None:
    """Close a client the store made."""
    client.close()
    if isinstance(client, RedisCluster):
        # RedisCluster.close() leaves its nodes' connection pools open
        # (the node clients do not own their pools): close them too.
        for node in list(client.nodes_manager.nodes_cache.values()):
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
