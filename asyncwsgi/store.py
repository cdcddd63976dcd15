"""The task table: what a store keeps and the narrow interface every store offers.

A store holds one :class:`TaskRecord` per task. The middleware writes the record
before it answers ``202``; the process that runs the task moves it from
``queued`` to ``running`` to ``done``; any process answers the status URL from
it. Every method is safe to call from several threads at once, and a shared
store (SQLite, Redis) from several processes too.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["KeyEntry", "Result", "Store", "TaskRecord", "open_store"]

State = Literal["queued", "running", "done", "expired"]
Progress = dict[str, Any]


@dataclass(slots=True)
class Result:
    """A captured WSGI response: what a server would have sent, exactly."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(slots=True)
class TaskRecord:
    """One row of the task table.

    ``owner`` is a hash of the submitter's owner value (never the value itself).
    ``lease_until`` is when the task (running, or queued in a process's own
    pool) is presumed lost unless that process heartbeats again; a task
    queued elsewhere (a Celery broker) has none until it starts.
    ``state == "expired"`` is a tombstone: the result
    was dropped after its TTL and only the fact remains, so a poll gets 410.
    """

    id: str
    state: State = "queued"
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    progress: Progress | None = None
    result: Result | None = None
    owner: str | None = None
    lease_until: float | None = None
    ttl: float = 300.0


@dataclass(slots=True)
class KeyEntry:
    """What an ``Idempotency-Key`` is bound to; ``task_id`` is None while the
    first request with that key is still being accepted."""

    task_id: str | None
    fingerprint: str | None


class Store(abc.ABC):
    """The interface of a task table.

    ``shared`` tells whether other processes (and machines) see the same
    table; ``url`` is how another process opens it (None for in-process
    stores).
    """

    shared: bool = False
    url: str | None = None

    @abc.abstractmethod
    def create(
        self,
        record: TaskRecord,
        *,
        key: str | None = None,
        fingerprint: str | None = None,
        limit: int | None = None,
    ) -> bool:
        """Insert a new queued task and bind ``key`` (if given) to it, unless
        ``limit`` tasks are already queued or running: then nothing is written
        and the answer is False. Check and insert are one atomic step."""

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The record, a tombstone (``state == "expired"``), or None.

        A queued or running task whose lease has passed is completed here as
        a 500 ("worker lost") before it is returned.
        """

    @abc.abstractmethod
    def start(self, task_id: str, lease_until: float) -> bool:
        """Move a queued task to running. False if it is gone (deleted)."""

    @abc.abstractmethod
    def heartbeat(self, task_ids: list[str], lease_until: float) -> None:
        """Extend the lease of queued and running tasks."""

    @abc.abstractmethod
    def set_progress(self, task_id: str, progress: Progress) -> None:
        """Record the progress of a running task."""

    @abc.abstractmethod
    def finish(self, task_id: str, result: Result) -> bool:
        """Store the result of a queued or running task, kept for the
        record's ``ttl`` seconds. False (and nothing written) if the task was deleted or has
        already finished: a finished result is never overwritten."""

    @abc.abstractmethod
    def delete(self, task_id: str) -> bool:
        """Forget a task. A running task sees itself cancelled."""

    @abc.abstractmethod
    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        """Block until the task is done (or gone), at most ``timeout``
        seconds; return the record as it is then. Woken by the finish, not by
        polling, where the store can."""

    @abc.abstractmethod
    def reserve_key(self, key: str, ttl: float) -> KeyEntry | None:
        """Reserve an idempotency key for a request being accepted.

        None means the key was free and is now held by the caller, who must
        then :meth:`create` with it or :meth:`release_key`. Otherwise the
        entry it is bound to is returned and nothing changes.
        """

    @abc.abstractmethod
    def release_key(self, key: str) -> None:
        """Drop a reservation whose request was refused."""

    @abc.abstractmethod
    def count_active(self) -> int:
        """Queued plus running tasks in the whole table."""

    def is_cancelled(self, task_id: str) -> bool:
        record = self.get(task_id)
        return record is None or record.state != "running"

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections; the store is not used afterwards."""


def open_store(store: Store | str | None, **options: Any) -> Store:
    """A store from a Store, a URL (``memory:``, ``sqlite:///tasks.db``,
    ``sqlite:////abs/path/tasks.db``, ``redis://host:port/db``, ``rediss://``,
    ``unix:///path/redis.sock``, ``redis+cluster://host:port/?prefix=...``
    for Redis Cluster) or None (a new in-process store)."""
    if isinstance(store, Store):
        return store
    if store is None or store in ("memory:", "memory://"):
        from .memory import MemoryStore

        return MemoryStore(**options)
    if not isinstance(store, str):
        raise TypeError(f"store must be a Store, a URL or None, not {type(store).__name__}")
    scheme = store.partition(":")[0].lower()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(store, **options)
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        from .redis import RedisStore

        return RedisStore.from_url(store, **options)
    raise ValueError(
        f"unknown store URL {store!r}: use memory:, sqlite:///path.db, redis://host:port/db"
    )
