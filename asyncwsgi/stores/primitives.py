"""What each store supplies: the primitives the rules in :mod:`.base` are
written on, each in the store's own language (Python, SQL, Lua), and the
optional hooks for spooled bodies, waking waiters and closing.

The methods are atomic where they say so; every one may raise the backend's
own errors (those in ``_backend_errors``), which the interface translates
(:meth:`Primitives._fault`) into :class:`~asyncwsgi.stores.errors.StoreUnavailable`.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..task import Body, BodyKind, BodySink, Created, Delivery, Progress, Result, State, TaskRecord

__all__ = ["Primitives"]

# The generic watch() reads again this often.
_WATCH_POLL = 0.1


class Primitives(abc.ABC):
    """The part of a store that each store writes (see the module)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections; the store is not used afterwards."""

    # -- bodies kept out of memory (optional) ---------------------------------

    def open_sink(self, task_id: str, kind: BodyKind) -> BodySink:
        """Where a body too large for memory goes as it is produced (a file,
        chunks in Redis); raises :class:`StoreFull` when the byte budget is
        spent. The body written is handed back with ``create`` (a request
        body, in the job) or ``finish`` (a result), and removed with its task:
        at its finish (a request body), expiry or deletion (both)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hold spooled bodies")

    def request_body(self, task_id: str, size: int, sha256: str) -> Body:
        """A task's spooled request body, for a worker in another process
        (Celery) that got only its size and digest."""
        raise NotImplementedError(f"{type(self).__name__} cannot hold spooled bodies")

    def want_room(self, seconds: float) -> None:  # noqa: B027 (optional hook)
        """A result's writer waits for room in the byte budget: refuse new
        tasks (``create`` raises :class:`StoreFull`) for the next ``seconds``,
        in every process that shares the store, so that the work already
        accepted gets the room that frees first. The writer renews it while
        it waits, and ends it (``seconds=0``) once it has its room. A store
        without a byte budget has nothing to do."""

    #: The backend's exceptions that may mean "unreachable, locked or full";
    #: :meth:`_fault` tells which do. (An empty tuple catches nothing, and a
    #: try costs nothing until it catches.)
    _backend_errors: tuple[type[Exception], ...] = ()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """The interface's translation of backend errors (:meth:`_fault`), for
        a store's other entry points (its spooled bodies), off the hot path."""
        try:
            yield
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def _fault(self, exc: Exception) -> None:  # noqa: B027 (optional hook)
        """Raise the :class:`StoreUnavailable` (or :class:`StoreFull`) that a
        backend error caught by ``_backend_errors`` means, from it; return
        when it means something else (it is then raised as it is)."""

    @abc.abstractmethod
    def _insert(
        self,
        record: TaskRecord,
        key: str | None,
        fingerprint: str | None,
        limit: int | None,
        room: int,
    ) -> Created:
        """Atomically: the task ``key`` is bound to, if any; else, unless
        ``limit`` tasks are active, insert ``record`` (a copy of it) and bind
        ``key`` to it; :class:`StoreFull` unless ``room`` bytes of the budget
        are free and no writer waits for room."""

    @abc.abstractmethod
    def _read(self, task_id: str) -> TaskRecord | None:
        """A snapshot of the record or its tombstone, as stored (results past
        their ``ttl`` already turned into tombstones)."""

    @abc.abstractmethod
    def _start(self, task_id: str, now: float, lease_until: float) -> bool:
        """Queued -> running, with ``started = now`` and the lease."""

    @abc.abstractmethod
    def _heartbeat(self, task_ids: list[str], lease_until: float) -> None:
        """Set the lease of those of ``task_ids`` that are active."""

    @abc.abstractmethod
    def _set_progress(self, task_id: str, progress: Progress) -> None:
        """Set the progress of a running task."""

    @abc.abstractmethod
    def _finish(
        self, task_id: str, result: Result, now: float, *, lapsed_before: float | None
    ) -> bool:
        """Atomically: if the task is active (and, with ``lapsed_before``, its
        lease ended before then), make it done with ``result`` and start its
        retention; wake its waiters."""

    @abc.abstractmethod
    def _delete(self, task_id: str) -> bool:
        """Remove a task, its key and its tombstone; wake its waiters."""

    @abc.abstractmethod
    def _lapsed(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` ids of active tasks whose lease ended before ``now``."""

    @abc.abstractmethod
    def _count(self) -> int:
        """Active tasks in the table."""

    @abc.abstractmethod
    def _count_states(self) -> dict[str, int]:
        """Queued and running tasks in the table, by state."""

    def _block(self, task_id: str, timeout: float, poll: float) -> None:
        """Sleep until the task may have finished, at most ``timeout``
        seconds. Without a way to be woken, a store just sleeps ``poll``."""
        time.sleep(min(poll, timeout))

    @contextmanager
    def _listen(self, task_id: str) -> Iterator[Callable[[float], None]]:
        """Listen for changes of a task (from before the caller's next read)
        and give a function that blocks until one may have come, at most its
        argument in seconds. Without a way to be woken: a short sleep."""
        yield lambda timeout: time.sleep(min(_WATCH_POLL, timeout))

    @abc.abstractmethod
    def _list(
        self,
        owner: str | None,
        state: State | None,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[TaskRecord]:
        """One page of the task list (see :meth:`list_tasks`), from an index."""

    @abc.abstractmethod
    def _claim_callbacks(self, now: float, lease: float, limit: int) -> list[Delivery]:
        """Atomically: take up to ``limit`` deliveries due at ``now``, push
        their due time to ``now + lease`` and mark them with a new claim."""

    @abc.abstractmethod
    def _settle_callback(self, delivery: Delivery, retry_at: float | None) -> bool:
        """Atomically, if the delivery still carries ``delivery.claim``:
        forget it (``retry_at`` None) or make it due at ``retry_at``,
        unclaimed, with one more attempt."""
