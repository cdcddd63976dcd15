"""What a redis-py error means for the store: unavailable (``503`` with
``Retry-After``), full, or a bug (raised as it is)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from ..base import StoreFull, StoreUnavailable

__all__ = ["BACKEND_ERRORS", "UNAVAILABLE", "fault", "translated", "unreachable_cluster"]

# Redis down, restarting, loading its data, failing over, or a cluster that
# lost a slot: the store is unavailable, not broken (ConnectionError covers
# BusyLoadingError, and redis-py's TimeoutError a Redis that stopped answering).
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,
    redis.exceptions.SlotNotCoveredError,
)

#: What the store's calls catch and hand to :func:`fault`. (A cluster client
#: that finds no node while it refreshes its layout raises a
#: RedisClusterException, which is not a RedisError.)
BACKEND_ERRORS: tuple[type[Exception], ...] = (
    *UNAVAILABLE,
    redis.ResponseError,
    redis.exceptions.RedisClusterException,
)


def unreachable_cluster(exc: redis.exceptions.RedisClusterException) -> bool:
    """Whether a cluster client's error says that no node could be reached
    (rather than a misuse, such as a command a cluster refuses). Newer
    redis-py releases raise RedisClusterUnreachableError for it; earlier ones
    a RedisClusterException caused by the connection's error."""
    unreachable = getattr(redis.exceptions, "RedisClusterUnreachableError", None)
    if unreachable is not None and isinstance(exc, unreachable):
        return True
    return isinstance(exc.__cause__, (*UNAVAILABLE, OSError))


def fault(exc: Exception) -> None:
    """Raise the :class:`StoreUnavailable` or :class:`StoreFull` that ``exc``
    means, from it; return when it means neither (a bug: the caller re-raises
    it as it is)."""
    if isinstance(exc, redis.OutOfMemoryError):  # maxmemory reached under noeviction
        raise StoreFull(f"Redis is out of memory: {exc}") from exc
    if isinstance(exc, UNAVAILABLE) or (
        isinstance(exc, redis.exceptions.RedisClusterException) and unreachable_cluster(exc)
    ):
        raise StoreUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc
    if str(exc).startswith("MISCONF"):
        # A Redis that cannot persist refuses writes (stop-writes-on-bgsave-error).
        raise StoreUnavailable(f"Redis refuses writes: {exc}") from exc


@contextmanager
def translated() -> Iterator[None]:
    """Redis errors raised inside become the store's faults (see :func:`fault`)."""
    try:
        yield
    except BACKEND_ERRORS as exc:
        fault(exc)
        raise
