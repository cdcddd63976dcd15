"""Task stores: where the task table lives (in process, SQLite, Redis)."""

from __future__ import annotations

from typing import Any

from .base import Store, StoreFull, StoreUnavailable
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "Store", "StoreFull", "StoreUnavailable", "open_store"]


def open_store(store: Store | str | None, **options: Any) -> Store:
    """A store from a Store, a URL (``memory:``, ``sqlite:///tasks.db``,
    ``sqlite:////abs/path/tasks.db``, ``redis://host:port/db``, ``rediss://``,
    ``unix:///path/redis.sock``, ``redis+cluster://host:port/?prefix=...``
    for Redis Cluster) or None (a new in-process store)."""
    if isinstance(store, Store):
        return store
    if store is None or store in ("memory:", "memory://"):
        return MemoryStore(**options)
    if not isinstance(store, str):
        raise TypeError(f"store must be a Store, a URL or None, not {type(store).__name__}")
    scheme = store.partition(":")[0].lower()
    if scheme == "sqlite":
        return SQLiteStore.from_url(store, **options)
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        from .redis import RedisStore

        return RedisStore.from_url(store, **options)
    raise ValueError(
        f"unknown store URL {store!r}: use memory:, sqlite:///path.db, redis://host:port/db"
    )
