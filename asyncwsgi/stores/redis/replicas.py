"""Acknowledged means replicated: a write followed by ``WAIT``.

Redis replicates asynchronously: what a primary acknowledged and no replica
had received yet is gone when a replica takes over. With ``min_replicas``
the store sends each step that an answer depends on (a 202, a stored
result, a DELETE, a callback claim) in one pipeline with ``WAIT
min_replicas <timeout>``, on one connection, and gives the step's answer
only once that many replicas confirmed it; otherwise :class:`Unconfirmed`
(a :class:`~asyncwsgi.stores.base.StoreUnavailable`: the client gets 503,
a result is retried).

``WAIT`` waits for the replication offset of the connection's own last
write. A step may write nothing (a result already stored by an earlier,
unconfirmed try; a key already bound), and then that offset may be older
than the write the answer rests on, so every pipeline writes one small key
(``<prefix>wait``) between the step and the ``WAIT``: the replication
stream is ordered, so a replica that has that write has everything the
primary held when the step ran. (``WAIT`` cannot run inside a script or a
``MULTI``: there it never blocks.)

On a Redis Cluster the pipeline goes to the node that serves the table's
slot (the prefix's hash tag puts the whole table in one slot, so
``min_replicas`` counts that shard's replicas); after a failover that node
answers ``MOVED`` or not at all, and the cluster client is told to read the
topology again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from redis.cluster import RedisCluster

from ..base import StoreUnavailable
from .faults import BACKEND_ERRORS

if TYPE_CHECKING:
    from redis.commands.core import Script

__all__ = ["CONFIRMED", "Replication", "Unconfirmed", "undo_create", "warn_if_short"]

logger = logging.getLogger("asyncwsgi")

#: The steps whose answer a client relies on: a 202 (and an idempotent
#: retry's answer), a stored result (and a lost verdict), a DELETE, a claim
#: to send a callback.
CONFIRMED = frozenset({"create_task", "finish_task", "delete_task", "claim_callbacks"})

# How long the marker key lives: it only has to be written, never read.
_MARKER_MS = 60_000


class Unconfirmed(StoreUnavailable):
    """Fewer than ``min_replicas`` replicas confirmed a step in time: it is
    on the primary, and a failover now could undo it. ``answer`` is the
    step's own answer."""

    def __init__(self, message: str, answer: Any) -> None:
        super().__init__(message)
        self.answer = answer


class Replication:
    """Runs a script followed by ``WAIT`` (see the module's docstring)."""

    def __init__(self, min_replicas: int, timeout: float, marker: str) -> None:
        self.min_replicas = min_replicas
        self.timeout = timeout
        # WAIT takes whole milliseconds, and 0 would mean "for ever".
        self.timeout_ms = max(1, round(timeout * 1000))
        self.marker = marker

    @classmethod
    def of(cls, min_replicas: int, timeout: float, prefix: str) -> Replication | None:
        """The store's, for its settings (checked): None without ``min_replicas``."""
        if isinstance(min_replicas, bool) or not isinstance(min_replicas, int) or min_replicas < 0:
            raise ValueError(f"min_replicas must be a whole number >= 0, not {min_replicas!r}")
        if not timeout > 0:
            raise ValueError(f"replica_timeout must be seconds > 0, not {timeout!r}")
        return cls(min_replicas, timeout, prefix + "wait") if min_replicas else None

    def check(
        self, client: redis.Redis | RedisCluster, block_limit: float | None, key: str
    ) -> None:
        """Once the client is made: a ``WAIT`` must end before the socket
        gives up (a ValueError), and a primary with fewer replicas than
        ``min_replicas`` is worth a warning (every submission would be a 503)."""
        if block_limit is not None and self.timeout >= block_limit:
            raise ValueError(
                f"replica_timeout ({self.timeout} s) must be shorter than the client's "
                "socket_timeout, or every WAIT outlives the socket"
            )
        warn_if_short(client, self.min_replicas, key)

    def run(
        self, client: redis.Redis | RedisCluster, script: Script, keys: list[str], args: list[Any]
    ) -> Any:
        """The script's answer, once ``min_replicas`` replicas have it."""
        loaded = False
        while True:
            target = _target(client, keys[0])
            # (Through Any: redis-py before 6 leaves execute unannotated.)
            pipe: Any = target.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.set(self.marker, b"1", px=_MARKER_MS)
            pipe.wait(self.min_replicas, self.timeout_ms)
            try:
                answer, _, acked = pipe.execute(raise_on_error=False)
            except (redis.ConnectionError, redis.TimeoutError):
                _lost_node(client)
                raise
            if isinstance(answer, redis.exceptions.NoScriptError) and not loaded:
                # A new primary (a failover) has not seen the script yet.
                target.script_load(script.script)
                loaded = True
                continue
            if isinstance(answer, redis.exceptions.AskError):  # MOVED too
                _lost_node(client)
                raise StoreUnavailable(f"Redis: the table's slot moved: {answer}")
            if isinstance(answer, Exception):
                raise answer
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < self.min_replicas:
                raise Unconfirmed(
                    f"Redis: {acked} of min_replicas={self.min_replicas} replicas confirmed "
                    f"the write within {self.timeout_ms} ms",
                    answer,
                )
            return answer


def undo_create(
    run_unconfirmed: Callable[[str, list[str], list[Any]], Any], task_key: str, task_id: str
) -> None:
    """Remove a task whose creation the replicas did not confirm: its
    submission is answered 503, so nothing may run it or answer for it.
    Should this removal be lost too (the primary dies meanwhile), the
    record that a replica may hold never runs (no executor got it) and
    ends as lost when its queue lease lapses."""
    try:
        run_unconfirmed("delete_task", [task_key], [task_id])
    except BACKEND_ERRORS as exc:
        logger.warning(
            "asyncwsgi: could not remove task %s, which the replicas did not confirm "
            "(%s): its lease ends it",
            task_id,
            exc,
            extra={"task_id": task_id},
        )


def _target(client: redis.Redis | RedisCluster, key: str) -> redis.Redis:
    """The client whose one connection carries the pipeline: the client
    itself, or the cluster's client of the node serving ``key``."""
    if not isinstance(client, RedisCluster):
        return client
    cluster: Any = client  # (annotated differently across redis-py releases)
    node = cluster.get_node_from_key(key)
    target: redis.Redis = cluster.get_redis_connection(node)
    return target


def _lost_node(client: redis.Redis | RedisCluster) -> None:
    """The node went away or gave up the slot: have the cluster client read
    the topology again before the next call (the plain and Sentinel clients
    find the primary by themselves)."""
    if not isinstance(client, RedisCluster):
        return
    try:
        # (Through Any: redis-py before 6 leaves it unannotated.)
        nodes: Any = client.nodes_manager
        nodes.initialize()
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        logger.debug("asyncwsgi: could not read the cluster's topology: %s", exc)


def warn_if_short(client: redis.Redis | RedisCluster, min_replicas: int, key: str) -> None:
    """Warn when the primary that serves ``key`` has fewer replicas than
    ``min_replicas``: until more connect, every submission is a 503."""
    try:
        # (Through Any: redis-py releases annotate info()'s answer differently.)
        target: Any = _target(client, key)
        info = target.info("replication")
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        logger.debug("asyncwsgi: could not count Redis's replicas: %s", exc)
        return  # down at start: the calls will say so
    connected = int(info.get("connected_slaves", 0))
    if connected < min_replicas:
        logger.warning(
            "asyncwsgi: Redis has %d replica(s) connected and min_replicas is %d: until "
            "more are, every submission is answered 503",
            connected,
            min_replicas,
        )
