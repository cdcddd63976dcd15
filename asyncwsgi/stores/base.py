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
a wait ends (:mod:`.waits`). A store supplies only the primitives
(:mod:`.primitives`), written in its own language (Python, SQL, Lua).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import ClassVar

from ..results import lost_result
from ..task import Created, Delivery, Progress, Result, State, TaskRecord
from .errors import BodyRemoved, StoreFull, StoreUnavailable
from .waits import ACTIVE, Waits, changed

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

# How many lapsed tasks one call reclaims at most (the rest on the next call).
RECLAIM_BATCH = 100
# How many batches one sweep (reclaim()) ends at most: a bound on one round.
_RECLAIM_ROUNDS = 10


def lapsed(record: TaskRecord, now: float) -> bool:
    """The lease rule: a queued or running task whose lease has passed is lost
    (the process that held it stopped heartbeating)."""
    return record.state in ACTIVE and record.lease_until is not None and record.lease_until < now


class Store(Waits):
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

    #: Where the store reads the time (seconds since the epoch) for its rules
    #: (leases, expiry, the callbacks due) and for the times its Python code
    #: hands its backend: every read of the time goes through here, so that a
    #: test can move time forward instead of sleeping (assign a callable to a
    #: store's ``clock``). Expiry that the backend does on its own clock (Redis
    #: key TTLs) does not follow it.
    clock: Callable[[], float] = time.time

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
            if not self._reclaim(self.clock()):
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
            now = self.clock()
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
            return self._start(task_id, self.clock(), lease_until)
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
            return self._finish(task_id, result, self.clock(), lapsed_before=None)
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
            self._reclaim(self.clock())
            return self._count()
        except self._backend_errors as exc:
            self._fault(exc)
            raise

    def count_states(self) -> dict[str, int]:
        """``{"queued": n, "running": m}`` over the whole table (lapsed tasks
        finished as lost first): the gauges every process reports alike."""
        try:
            self._reclaim(self.clock())
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
            self._expire_due(self.clock())
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
            now = self.clock()
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
