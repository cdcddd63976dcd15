"""The task table: the interface every store offers, and the rules they share.

A store holds one :class:`~asyncwsgi.task.TaskRecord` per task. The middleware writes the record
before it answers ``202``; the process that runs the task moves it from
``queued`` to ``running`` to ``done``; any process answers the status URL from
it. Every method is safe to call from several threads at once, and a shared
store (SQLite, Redis) from several processes too.

The rules live here, once: the lease rule (a queued or running task whose
lease has passed is lost, and is finished as such by whichever call meets it
first), retention (a result is kept for its record's ``ttl``, then leaves a
tombstone for ``tombstone_ttl`` seconds, at most ``max_tombstones`` of them;
an idempotency key lives as long as its task), what "cancelled" means and how
a wait ends. A store supplies only the primitives (the ``_`` methods below),
written in its own language (Python, SQL, Lua).
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

from ..results import lost_result
from ..task import Body, BodyKind, BodySink, Created, Delivery, Progress, Result, State, TaskRecord

__all__ = [
    "ACTIVE",
    "BodyRemoved",
    "Store",
    "StoreFull",
    "StoreUnavailable",
    "changed",
    "lapsed",
]

logger = logging.getLogger("asyncwsgi")

# The states of a task that is not finished yet.
ACTIVE = ("queued", "running")

# How many lapsed tasks one call reclaims at most (the rest on the next call).
RECLAIM_BATCH = 100
# How many batches one sweep (reclaim()) ends at most: a bound on one round.
_RECLAIM_ROUNDS = 10
# The generic wait() reads again after a sleep that grows from the first to
# the last value: a short task answers at once, a long wait costs at most ten
# cheap reads a second.
_POLL_FIRST = 0.005
_POLL_LAST = 0.1
# The generic watch() reads again this often.
_WATCH_POLL = 0.1


class StoreUnavailable(Exception):
    """The store cannot be reached or cannot take a write right now (a server
    down, a lock held past the busy timeout, a full disk). Every store raises
    this, and only this, for such faults: the middleware answers ``503`` with
    ``Retry-After`` to a client, and the runner retries a finished result."""


class StoreFull(StoreUnavailable):
    """The store is up but has no room for this write (a full disk, a byte
    budget spent). New work is refused with ``503``; a result that cannot be
    stored is replaced by a short error result rather than retried for ever."""


class BodyRemoved(StoreFull):
    """A body's writer found its body removed under it: its task was deleted,
    timed out or judged lost, and the bytes it had reserved were given back.
    A write now would be outside the byte budget, so the writer stops."""

    def __init__(self) -> None:
        super().__init__("the body was removed while it was being written")


def lapsed(record: TaskRecord, now: float) -> bool:
    """The lease rule: a queued or running task whose lease has passed is lost
    (the process that held it stopped heartbeating)."""
    return record.state in ACTIVE and record.lease_until is not None and record.lease_until < now


def changed(seen: TaskRecord | None, record: TaskRecord | None) -> bool:
    """Whether a watcher that saw ``seen`` has something new to show: another
    state or other progress."""
    if seen is None or record is None:
        return seen is not record
    return seen.state != record.state or seen.progress != record.progress


class Store(abc.ABC):
    """The interface of a task table.

    ``shared`` tells whether other processes (and machines) see the same
    table; ``url`` is how another process opens it (None for in-process
    stores).
    """

    shared: bool = False
    url: str | None = None
    #: The bytes of spooled bodies (results and request bodies above the
    #: middleware's ``spool_threshold``) the store may hold; None: no bound.
    #: A new task is refused (:class:`StoreFull`) unless the ``room`` it asks
    #: for is free, or while a writer waits for room (:meth:`want_room`); a
    #: result's writer reserves its worst case (``max_result``) before it
    #: writes, so a task once accepted never runs out of budget.
    max_stored_bytes: int | None = None
    #: Whether the tasks created from now on enter the task list's index
    #: (:meth:`list_tasks` finds only those). None, until a middleware says:
    #: kept. A middleware without a task list turns it off, so that no task
    #: pays for an index nobody reads; one with a task list turns it on, for
    #: good (several middlewares may share a store). A store may keep its
    #: index whatever this says (one that costs nothing to keep).
    listing: bool | None = None

    def use_listing(self, on: bool) -> None:
        """What a middleware says of its task list (see :attr:`listing`)."""
        if on:
            self.listing = True
        elif self.listing is None:
            self.listing = False

    #: Told of each task a store ended as lost (its lease lapsed), once, by
    #: the call that ended it, in whichever process that was: the metrics
    #: add their lost counter here (the stores import no metrics). Shared by
    #: every store of the process.
    lost_hooks: ClassVar[list[Callable[[TaskRecord], None]]] = []

    def __init__(self, *, max_tombstones: int = 10_000, tombstone_ttl: float = 3600.0) -> None:
        if max_tombstones < 0:
            raise ValueError("max_tombstones must be 0 or more")
        if tombstone_ttl < 0:
            raise ValueError("tombstone_ttl must be 0 or more seconds")
        self.max_tombstones = max_tombstones
        self.tombstone_ttl = tombstone_ttl

    # -- the interface ---------------------------------------------------

    def create(
        self,
        record: TaskRecord,
        *,
        key: str | None = None,
        fingerprint: str | None = None,
        limit: int | None = None,
        room: int = 0,
    ) -> Created:
        """Insert a new queued task and bind the idempotency ``key`` (if
        given) to it, in one atomic step, unless

        - ``key`` is already bound to a task that still exists: nothing is
          written and that task is returned (``existing``), whatever the limit;
        - ``limit`` tasks are already queued or running: nothing is written;
        - the byte budget has less than ``room`` bytes free, or a writer waits
          for room: :class:`StoreFull` is raised.

        Tasks whose lease has lapsed do not count (they are finished as lost
        first). A key lives as long as its task: deleted with it, forgotten
        when its result expires.
        """
        try:
            outcome = self._insert(record, key, fingerprint, limit, room)
            if outcome or outcome.existing is not None or limit is None:
                return outcome
            if not self._reclaim(time.time()):
                return outcome
            return self._insert(record, key, fingerprint, limit, room)
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def get(self, task_id: str) -> TaskRecord | None:
        """A snapshot of the record, a tombstone (``state == "expired"``), or
        None. A task found lapsed is finished as lost before it is returned."""
        try:
            record = self._read(task_id)
            now = time.time()
            if record is not None and lapsed(record, now):
                self._end_lapsed(record, now)
                record = self._read(task_id)
            return record
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def start(self, task_id: str, lease_until: float) -> bool:
        """Move a queued task to running. False if it is not queued (deleted,
        finished, or already started)."""
        try:
            return self._start(task_id, time.time(), lease_until)
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def heartbeat(self, task_ids: list[str], lease_until: float) -> None:
        """Extend the lease of queued and running tasks."""
        if task_ids:
            try:
                self._heartbeat(task_ids, lease_until)
            except self._backend_errors as exc:
                self._fault(exc)
                raise

    def set_progress(self, task_id: str, progress: Progress) -> None:
        """Record the progress of a running task."""
        try:
            self._set_progress(task_id, progress)
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def finish(self, task_id: str, result: Result) -> bool:
        """Store the result of a queued or running task, kept for the
        record's ``ttl`` seconds. False (and nothing written) if the task was
        deleted or has already finished: a finished result is never
        overwritten."""
        try:
            return self._finish(task_id, result, time.time(), lapsed_before=None)
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def delete(self, task_id: str) -> bool:
        """Forget a task (and its key). A running task sees itself cancelled."""
        try:
            return self._delete(task_id)
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def is_cancelled(self, task_id: str) -> bool:
        """Whether a task should stop: it is no longer running (deleted,
        finished, or lost)."""
        record = self.get(task_id)
        return record is None or record.state != "running"

    def count_active(self) -> int:
        """Queued plus running tasks in the whole table (lapsed ones finished
        as lost first)."""
        try:
            self._reclaim(time.time())
            return self._count()
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def count_states(self) -> dict[str, int]:
        """``{"queued": n, "running": m}`` over the whole table (lapsed tasks
        finished as lost first): the gauges every process reports alike."""
        try:
            self._reclaim(time.time())
            return self._count_states()
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def expire(self) -> None:
        """Remove now what is past its time: finished tasks past their ``ttl``
        with their bodies, tombstones past theirs, the bodies of writers that
        died. Any call that touches the store does that lazily too; the
        runner's janitor calls this so that the disk (and the byte budget)
        comes back while nobody calls."""
        try:
            self._expire_due(time.time())
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def reclaim(self) -> int:
        """Finish as lost, now, every task whose lease has lapsed: what a read
        of such a task does, done unasked. Every process that shares the store
        calls it every few seconds (the runner's sweeper), so a task whose
        process died ends, gives its byte budget back and has its "lost"
        callback sent though nobody reads it. Several callers at once end
        each task once (the finish is conditional on the lapsed lease). How
        many tasks this call ended."""
        try:
            now = time.time()
            ended = 0
            for _ in range(_RECLAIM_ROUNDS):
                found = self._lapsed(now, RECLAIM_BATCH)
                ended += self._end_all(found, now)
                if len(found) < RECLAIM_BATCH:
                    break
            return ended
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def _expire_due(self, now: float) -> None:  # noqa: B027 (a store may expire on every read)
        """What :meth:`expire` does; nothing by default."""

    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        """Block until the task is done (or gone), at most ``timeout``
        seconds; return the record as it is then. A lease that lapses during
        the wait ends it with the lost verdict. Woken by the finish where the
        store can (:meth:`_block`), by reading again where it cannot."""
        deadline = time.monotonic() + timeout
        poll = _POLL_FIRST
        while True:
            record = self.get(task_id)
            if record is None or record.state not in ACTIVE:
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return record
            if record.lease_until is not None:
                # Wake when the lease passes, to give its verdict then.
                remaining = min(remaining, max(0.001, record.lease_until - time.time() + 0.001))
            try:
                self._block(task_id, remaining, poll)
            except self._backend_errors as exc:
                self._fault(exc)
                raise
            poll = min(poll * 1.5, _POLL_LAST)

    def watch(self, task_id: str, seen: TaskRecord | None, timeout: float) -> TaskRecord | None:
        """Block until the task differs from ``seen`` (see :func:`changed`),
        is done or gone, at most ``timeout`` seconds; return it as it is then
        (a Server-Sent Events stream's wait). Woken by the change where the
        store can (:meth:`_listen`), by reading again where it cannot."""
        deadline = time.monotonic() + timeout
        with self._translated(), self._listen(task_id) as block:
            while True:
                record = self.get(task_id)
                if record is None or record.state not in ACTIVE or changed(seen, record):
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return record
                if record.lease_until is not None:
                    remaining = min(remaining, max(0.001, record.lease_until - time.time() + 0.001))
                block(remaining)

    def list_tasks(
        self,
        owner: str | None,
        *,
        state: State | None = None,
        before: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[TaskRecord]:
        """The live (queued, running or done) tasks bound to ``owner`` (None:
        those bound to no owner), in ``state`` if given, newest first by
        ``(created, id)``, only those strictly older than ``before``, at most
        ``limit``. Costs O(limit), not O(table): each store keeps an index in
        that order. A done task's ``result`` has its status and headers but
        an empty body: a page never loads result bodies."""
        with self._translated():
            return self._list(owner, state, before, limit)

    def claim_callbacks(self, now: float, lease: float, limit: int) -> list[Delivery]:
        """Claim at most ``limit`` completion callbacks due at ``now`` for
        ``lease`` seconds: no other caller gets them until then (or until
        :meth:`settle_callback`). A task with a ``callback`` gets one such
        delivery, due at once, when it finishes (whoever finishes it)."""
        with self._translated():
            return self._claim_callbacks(now, lease, limit)

    def settle_callback(self, delivery: Delivery, retry_at: float | None) -> bool:
        """Report a claimed delivery: sent or given up (``retry_at`` None: it is
        forgotten), or failed (due again at ``retry_at``, one more attempt
        counted). False (and nothing written) if the claim was lost meanwhile."""
        with self._translated():
            return self._settle_callback(delivery, retry_at)

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections; the store is not used afterwards."""

    # -- bodies kept out of memory -------------------------------------------

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

    # -- the rules' helpers ------------------------------------------------

    def _reclaim(self, now: float) -> int:
        """Finish as lost (a batch of) the tasks whose lease has lapsed; how
        many were finished. Each is read first, for its verdict depends on
        its state (:func:`~asyncwsgi.results.lost_result`); one that started
        meanwhile has a new lease and is left alone by ``lapsed_before``."""
        return self._end_all(self._lapsed(now, RECLAIM_BATCH), now)

    def _end_all(self, task_ids: list[str], now: float) -> int:
        finished = 0
        for task_id in task_ids:
            record = self._read(task_id)
            if record is not None and lapsed(record, now):
                finished += self._end_lapsed(record, now)
        return finished

    def _end_lapsed(self, record: TaskRecord, now: float) -> bool:
        """Give a lapsed task the verdict of its state, counted and logged
        once, by the call that ended it (the process that held it may be
        gone and cannot say why)."""
        lost = lost_result(record.state)
        ended = self._finish(record.id, lost, now, lapsed_before=now)
        if ended:
            _lost(record, lost, now)
        return ended

    def _tombstone(self, task_id: str, owner: str | None) -> TaskRecord:
        """What a read answers for a task whose result has expired."""
        return TaskRecord(task_id, state="expired", owner=owner)

    # -- what each store supplies ------------------------------------------

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


def _lost(record: TaskRecord, verdict: Result, now: float) -> None:
    """A task was finished as lost, by this call: counted and logged once,
    whichever process met the lapsed lease."""
    for hook in Store.lost_hooks:
        hook(record)
    logger.warning(
        "asyncwsgi: task %s ended as %s: %s (%s stopped renewing its lease %.1f s ago)",
        record.id,
        verdict.status[:3],
        verdict.body.decode().strip() if isinstance(verdict.body, bytes) else "",
        "its queue" if record.state == "queued" else "its worker",
        now - (record.lease_until or now),
        extra={"task_id": record.id},
    )
