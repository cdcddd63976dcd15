"""How the Redis store reaches Redis: its URL (with the store's own
``prefix=``), the client made from it, and the checks made once it is up.

A client is made when it is first needed, not when the store is: a Redis
Cluster client asks a node for the cluster's layout as it is made, and a
cluster that cannot be reached then is a :class:`StoreUnavailable` (a 503)
on each call until it can, as a plain Redis down is."""

from __future__ import annotations

import _thread
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from ..base import StoreUnavailable
from ..settings import split_url
from . import sentinel
from .faults import unreachable_cluster

__all__ = [
    "carry_settings",
    "DEFAULT_PREFIX",
    "Connection",
    "Client",
    "block_limit",
    "close",
    "connect",
    "warn_if_evicting",
]

logger = logging.getLogger("asyncwsgi")

DEFAULT_PREFIX = "asyncwsgi:"
# For the clients the store makes from a URL (the URL's own socket_timeout=
# and socket_connect_timeout= win): a Redis that stopped answering (stopped,
# partitioned) is a 503 after this long, not a request that hangs for ever.
TIMEOUTS = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}


Client = redis.Redis | RedisCluster


class _Lane:
    """One thread's own client over the store's connection pool: it takes a
    connection once and keeps it, where the shared client takes one from the
    pool and gives it back around every command (in redis-py 8 that is a
    third of a command's time in its caller: 75 against 51 us for one
    EVALSHA here). Given back when its thread ends."""

    __slots__ = ("pid", "client")

    def __init__(self, client: redis.Redis) -> None:
        self.pid = os.getpid()
        self.client = client

    @classmethod
    def over(cls, shared: redis.Redis) -> _Lane:
        """A lane on ``shared``'s pool. (Its client takes its connection as
        it is made, which raises while Redis is down: no lane is made then.)"""
        return cls(
            redis.Redis(connection_pool=shared.connection_pool, single_connection_client=True)
        )

    def ready(self) -> redis.Redis:
        """The client, its connection checked as the pool checks one it
        hands out: a connection with bytes waiting (the server closed it, a
        restart) is dropped, and the next command connects again."""
        client = self.client
        # (Through Any: redis-py keeps a connection's socket in ``_sock``, in
        # every release from 5.1 on, and annotates neither.)
        connection: Any = client.connection
        if connection is not None and connection._sock is not None:
            try:
                stale = connection.can_read()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                stale = True  # the server closed it: redis-py says so by raising
            if stale:
                connection.disconnect()
        return client

    def __del__(self) -> None:
        # Its thread ended (or the store went): the connection back to the
        # pool; a forked child leaves its parent's connection alone.
        if self.pid == os.getpid():
            # (Through Any: redis-py before 6 leaves Redis.close unannotated.)
            client: Any = self.client
            try:
                client.close()
            except (redis.exceptions.RedisError, OSError):
                pass  # a finaliser has nowhere to raise to: the pool drops it


class Connection:
    """The store's client, made on first use; the URL another process opens
    the same table by (None for a client given by the caller), the prefix,
    and whether the store closes the client.

    :attr:`lane` is what commands go through: for a client the store made
    for one server, each thread's own (:class:`_Lane`); otherwise the shared
    client. A cluster client routes each command to its node; a Sentinel
    client's pool follows a failover as connections come back to it, which a
    lane's never does; a caller's client keeps the caller's settings."""

    def __init__(
        self,
        make: Callable[[], Client],
        *,
        url: str | None,
        prefix: str,
        cluster: bool,
        owns_client: bool,
        lanes: bool = False,
    ) -> None:
        self._make = make
        self._client: Client | None = None
        self._lock = threading.Lock()
        self.url = url
        self.prefix = prefix
        self.cluster = cluster
        self.owns_client = owns_client
        # Lanes are per OS thread. Under gevent's or eventlet's monkey
        # patching, threading.local is per greenlet, and a lane would keep a
        # connection for every greenlet (every idle keep-alive client): those
        # keep the pool.
        green = threading.local is not _thread._local
        self._lanes = threading.local() if lanes and not green else None

    @property
    def lane(self) -> Client:
        """The client this thread's commands go through (see above)."""
        lanes = self._lanes
        if lanes is None:
            return self.client
        lane: _Lane | None = getattr(lanes, "lane", None)
        if lane is None or lane.pid != os.getpid():
            client = self.client
            if not isinstance(client, redis.Redis):
                return client
            lane = lanes.lane = _Lane.over(client)
        return lane.ready()

    @property
    def client(self) -> Client:
        """The client; :class:`StoreUnavailable` while a cluster that it must
        ask for its layout cannot be reached."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                try:
                    made = self._make()
                except redis.exceptions.RedisClusterException as exc:
                    if not unreachable_cluster(exc):
                        raise
                    raise StoreUnavailable(f"Redis Cluster: {exc}") from exc
                warn_if_evicting(made, self.prefix)
                self._client = made
            return self._client

    @property
    def made(self) -> Client | None:
        """The client if it was made."""
        return self._client


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


def carry_settings(url: str, settings: dict[str, Any]) -> str:
    """``url`` with ``settings`` as query parameters (those it does not have
    yet), so that a process that opens the store by its URL (a Celery or RQ
    worker) keeps the table the same way."""
    base, _, query = url.partition("?")
    present = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
    added = [(name, str(value)) for name, value in settings.items() if name not in present]
    if not added:
        return url
    return f"{base}?{'&'.join(filter(None, [query, urlencode(added)]))}"


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
        cluster = isinstance(client_or_url, RedisCluster)
        if cluster:
            check_cluster_prefix(prefix)
        given = client_or_url
        return Connection(
            lambda: given, url=None, prefix=prefix, cluster=cluster, owns_client=False
        )
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
    cluster = scheme.lower().endswith("+cluster")
    make: Callable[[], Client]
    if cluster:
        check_cluster_prefix(prefix)
        cluster_url = scheme[: -len("+cluster")] + ":" + rest

        def make() -> Client:
            # (Through Any: redis-py before 6 leaves it unannotated.)
            cluster: Any = RedisCluster
            return cast(Client, cluster.from_url(cluster_url, decode_responses=False, **TIMEOUTS))
    elif scheme.lower() in sentinel.SCHEMES:

        def make() -> Client:
            return sentinel.sentinel_client(connect_url, **TIMEOUTS)

    else:

        def make() -> Client:
            return redis.Redis.from_url(connect_url, decode_responses=False, **TIMEOUTS)

        return Connection(make, url=url, prefix=prefix, cluster=False, owns_client=True, lanes=True)
    return Connection(make, url=url, prefix=prefix, cluster=cluster, owns_client=True)


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
            node = cluster.get_node_from_key(prefix + "leases")
            info: dict[str, Any] = cluster.info("memory", target_nodes=node)
        else:
            # (Through Any: redis-py 7 annotates an answer that may be awaitable.)
            plain: Any = client
            info = plain.info("memory")
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        # Gone again already: the calls will say so; this check is advice.
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


def close(connection: Connection) -> None:
    """Close the client if the store made it."""
    client = connection.made
    if client is None or not connection.owns_client:
        return
    # (Through Any: redis-py before 6 leaves RedisCluster.close unannotated.)
    cast(Any, client).close()
    sentinel.close_sentinels(client)
    if isinstance(client, RedisCluster):
        # RedisCluster.close() leaves its nodes' connection pools open
        # (the node clients do not own their pools): close them too.
        for node in list(client.nodes_manager.nodes_cache.values()):
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
