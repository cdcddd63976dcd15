"""The task table: the narrow interface every store offers.

A store holds one :class:`~asyncwsgi.task.TaskRecord` per task. The middleware writes the record
before it answers ``202``; the process that runs the task moves it from
``queued`` to ``running`` to ``done``; any process answers the status URL from
it. Every method is safe to call from several threads at once, and a shared
store (SQLite, Redis) from several processes too.
"""

from __future__ import annotations

import abc

from ..task import KeyEntry, Progress, Result, TaskRecord

__all__ = ["Store", "StoreFull", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store cannot be reached or cannot take a write right now (a server
    down, a lock held past the busy timeout, a full disk). Every store raises
    this, and only this, for such faults: the middleware answers ``503`` with
    ``Retry-After`` to a client, and the runner retries a finished result."""


class StoreFull(StoreUnavailable):
    """The store is up but has no room for this write (a full disk, a byte
    budget spent). New work is refused with ``503``; a result that cannot be
    stored is replaced by a short error result rather than retried for ever."""


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
