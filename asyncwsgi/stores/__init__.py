"""Task stores: where the task table lives (in process, SQLite, Redis)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Store, StoreFull, StoreUnavailable
from .memory import MemoryStore
from .settings import kind_of, split_url, store_keywords
from .sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "Store", "StoreFull", "StoreUnavailable", "open_store"]


def open_store(
    store: Store | str | None, settings: Mapping[str, Any] | None = None, **options: Any
) -> Store:
    """A store from a Store, a URL (``memory:``, ``sqlite:///tasks.db``,
    ``sqlite:////abs/path/tasks.db``, ``redis://host:port/db``, ``rediss://``,
    ``unix:///path/redis.sock``, ``redis+cluster://host:port/?prefix=...``
    for Redis Cluster, ``redis+sentinel://host:26379/<service>/0`` for
    Redis Sentinel) or None (a new in-process store).

    ``settings`` are the stores' own settings by option name
    (:data:`~asyncwsgi.stores.settings.STORE_SETTINGS`; None: the store's
    default); a URL may carry them too, as query parameters."""
    given = {name: value for name, value in (settings or {}).items() if value is not None}
    if isinstance(store, Store):
        if given:
            raise ValueError(
                f"{', '.join(sorted(given))}: set on the store given, not as an option"
            )
        return store
    if store is None:
        store = "memory:"
    if not isinstance(store, str):
        raise TypeError(f"store must be a Store, a URL or None, not {type(store).__name__}")
    connect_url, in_url = split_url(store)
    for name in sorted(given.keys() & in_url.keys()):
        if given[name] != in_url[name]:
            raise ValueError(
                f"{name} is {in_url[name]!r} in the store URL but {given[name]!r} as an option"
            )
    kind = kind_of(connect_url)
    if kind not in ("memory", "sqlite", "redis"):
        raise ValueError(
            f"unknown store URL {store!r}: use memory:, sqlite:///path.db, redis://host:port/db"
        )
    if kind in ("memory", "sqlite") and "?" in connect_url:
        raise ValueError(
            f"store URL {store!r}: unknown parameter(s) {connect_url.partition('?')[2]!r}"
        )
    options.update(store_keywords(kind, {**in_url, **given}))
    if kind == "memory":
        if connect_url not in ("memory:", "memory://"):
            raise ValueError(f"store URL {store!r}: write memory:")
        return MemoryStore(**options)
    if kind == "sqlite":
        return SQLiteStore.from_url(connect_url, **options)
    try:
        from .redis import RedisStore
    except ModuleNotFoundError as exc:
        if exc.name != "redis":
            raise
        raise ModuleNotFoundError(
            f"the store {kind_of(connect_url)}: URL needs redis-py: "
            "pip install 'asyncwsgi-middleware[redis]'",
            name="redis",
        ) from None

    # The whole URL: the store's ``url`` carries the settings to workers.
    return RedisStore.from_url(store, **options)
