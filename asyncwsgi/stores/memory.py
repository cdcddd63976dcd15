"""The in-process store: the default, for one process (any number of threads).

Bodies spooled out of memory (results and request bodies above the
middleware's ``spool_threshold``) are files in a directory of this process's
own under ``results_dir`` (by default in the temporary directory), removed
with their task; a directory left by a process that crashed is removed when
the next store under the same ``results_dir`` spools its first body.
``max_stored_bytes`` bounds the bytes of those files.
"""

from __future__ import annotations

import _thread
import contextlib
import heapq
import os
import secrets
import shutil
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from ..task import (
    BodyKind,
    BodySink,
    Created,
    Delivery,
    KeyEntry,
    Progress,
    Result,
    State,
    TaskRecord,
)
from .base import ACTIVE, Store, lapsed
from .budget import BudgetSpent, check_room
from .files import ResultsDir, process_dir
from .listindex import ListIndex

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Tasks in a dict, guarded by one lock.

    Expiry is driven by a heap of finish deadlines and costs O(expired tasks)
    on the calls that touch the table; no sweeper thread, no full scan.
    An expired task leaves a tombstone (a poll gets 410 Gone) for
    ``tombstone_ttl`` seconds; ``max_tombstones`` bounds how many are kept,
    the oldest forgotten first. A forgotten id answers 404. Reads return
    copies: a record handed out never changes under its reader.

    >>> store = MemoryStore()
    >>> app = AsyncMiddleware(app, paths=["/reports/*"], store=store)
    """

    shared = False

    def __init__(
        self,
        *,
        max_tombstones: int = 10_000,
        tombstone_ttl: float = 3600.0,
        results_dir: str | None = None,
        max_stored_bytes: int | None = 8 * 2**30,
    ) -> None:
        super().__init__(max_tombstones=max_tombstones, tombstone_ttl=tombstone_ttl)
        self.results_dir = results_dir
        self.max_stored_bytes = max_stored_bytes
        self._files: ResultsDir | None = None
        self._dir_lock: int | None = None
        self._ledger = _Ledger()
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskRecord] = {}
        self._active: set[str] = set()
        self._deadlines: list[tuple[float, str]] = []
        self._tombstones: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._keys: dict[str, KeyEntry] = {}
        self._key_of: dict[str, str] = {}
        self._wakeups = _Wakeups(self._lock)
        # The task list's index: None until the list is first read, built
        # then from the table and kept up from then on; a process whose list
        # is off never pays for it.
        self._listed: ListIndex | None = None
        # Completion callbacks not yet settled, and when each is due.
        self._deliveries = _Deliveries()

    def _insert(
        self,
        record: TaskRecord,
        key: str | None,
        fingerprint: str | None,
        limit: int | None,
        room: int,
    ) -> Created:
        with self._lock:
            now = self.clock()
            self._expire(now)
            if key is not None:
                existing = self._keys.get(key)
                if existing is not None:
                    return Created(False, existing)
            if limit is not None and len(self._active) >= limit:
                return Created(False)
            self._ledger.check(self.max_stored_bytes, room, now)
            self._tasks[record.id] = _snapshot(record)
            self._active.add(record.id)
            if self._listed is not None:
                self._listed.move(record, None, record.state)
            if key is not None:
                self._keys[key] = KeyEntry(record.id, fingerprint)
                self._key_of[record.id] = key
            return Created(True)

    def _read(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            self._expire(self.clock())
            record = self._tasks.get(task_id)
            if record is not None:
                return _snapshot(record)
            tombstone = self._tombstones.get(task_id)
            return None if tombstone is None else self._tombstone(task_id, tombstone[1])

    def _start(self, task_id: str, now: float, lease_until: float) -> bool:
        with self._lock:
            record = self._tasks.get(task_id)
            if record is None or record.state != "queued":
                return False
            record.state = "running"
            record.started = now
            record.lease_until = lease_until
            if self._listed is not None:
                self._listed.move(record, "queued", "running")
            self._wakeups.changed()
            return True

    def _heartbeat(self, task_ids: list[str], lease_until: float) -> None:
        with self._lock:
            for task_id in task_ids:
                if task_id in self._active:
                    self._tasks[task_id].lease_until = lease_until

    def _set_progress(self, task_id: str, progress: Progress) -> None:
        with self._lock:
            record = self._tasks.get(task_id)
            if record is not None and record.state == "running":
                record.progress = progress
                self._wakeups.changed()

    def _finish(
        self, task_id: str, result: Result, now: float, *, lapsed_before: float | None
    ) -> bool:
        with self._lock:
            record = self._tasks.get(task_id)
            if record is None or record.state not in ACTIVE:
                return False
            if lapsed_before is not None and not lapsed(record, lapsed_before):
                return False
            self._drop_bodies(task_id, "request")
            if isinstance(result.body, bytes):
                self._drop_bodies(task_id, "result")  # a lost verdict: the writer's file goes
            if self._listed is not None:
                self._listed.move(record, record.state, "done")
            if record.callback is not None:
                delivery = Delivery(
                    task_id,
                    record.callback.url,
                    record.callback.status_url,
                    result.code,
                    now,
                    0,
                    now + record.ttl,
                    "",
                )
                self._deliveries.add(delivery, now)
            record.state = "done"
            record.finished = now
            record.result = result
            record.lease_until = None
            self._active.discard(task_id)
            self._wakeups.changed()
            heapq.heappush(self._deadlines, (now + record.ttl, task_id))
            self._wakeups.wake(task_id)
            return True

    def _delete(self, task_id: str) -> bool:
        with self._lock:
            record = self._tasks.pop(task_id, None)
            if record is None:
                return False
            if self._listed is not None:
                self._listed.move(record, record.state, None)
            self._active.discard(task_id)
            self._wakeups.changed()
            self._drop_key(task_id)
            self._drop_bodies(task_id)
            self._wakeups.wake(task_id)
            return True

    def _lapsed(self, now: float, limit: int) -> list[str]:
        with self._lock:
            found = []
            for task_id in self._active:
                if lapsed(self._tasks[task_id], now):
                    found.append(task_id)
                    if len(found) >= limit:
                        break
            return found

    def _count_states(self) -> dict[str, int]:
        counts = {"queued": 0, "running": 0}
        with self._lock:
            for record in self._tasks.values():
                if record.state in counts:
                    counts[record.state] += 1
        return counts

    def _count(self) -> int:
        return len(self._active)

    def _block(self, task_id: str, timeout: float, poll: float) -> None:
        with self._lock:
            if task_id not in self._active:
                return
            gate = self._wakeups.gate(task_id)
        if gate.acquire(timeout=max(0.0, timeout)):
            gate.release()

    @contextmanager
    def _listen(self, task_id: str) -> Iterator[Callable[[float], None]]:
        with self._wakeups.listen() as block:
            yield block

    def _list(
        self,
        owner: str | None,
        state: State | None,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[TaskRecord]:
        with self._lock:
            self._expire(self.clock())
            if self._listed is None:
                self._listed = ListIndex(self._tasks.values())
            ids = self._listed.page(owner, state, before, limit)
            page = [self._tasks[task_id] for task_id in ids]
            return [
                replace(
                    record,
                    result=None
                    if record.result is None
                    else Result(record.result.status, record.result.headers, b""),
                )
                for record in page
            ]

    def _claim_callbacks(self, now: float, lease: float, limit: int) -> list[Delivery]:
        with self._lock:
            return self._deliveries.claim(now, lease, limit)

    def _settle_callback(self, delivery: Delivery, retry_at: float | None) -> bool:
        with self._lock:
            return self._deliveries.settle(delivery, retry_at)

    def _drop_key(self, task_id: str) -> None:
        key = self._key_of.pop(task_id, None)
        if key is not None:
            self._keys.pop(key, None)

    def _expire_due(self, now: float) -> None:
        with self._lock:
            self._expire(now)

    def _expire(self, now: float) -> None:
        # Called with the lock held: pops only what is due.
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, task_id = heapq.heappop(deadlines)
            record = self._tasks.pop(task_id, None)
            if record is None:
                continue
            if self._listed is not None:
                self._listed.move(record, record.state, None)
            self._drop_key(task_id)
            self._drop_bodies(task_id)
            self._tombstones[task_id] = (now + self.tombstone_ttl, record.owner)
        tombstones = self._tombstones
        while tombstones and (
            len(tombstones) > self.max_tombstones or next(iter(tombstones.values()))[0] <= now
        ):
            tombstones.popitem(last=False)

    # -- bodies ----------------------------------------------------------

    def open_sink(self, task_id: str, kind: BodyKind) -> BodySink:
        with self._lock:
            self._ledger.check(self.max_stored_bytes)
            if self._files is None:
                path, self._dir_lock = process_dir(self.results_dir)
                self._files = ResultsDir(path)
                # Also when the process exits without close(): nobody else
                # can read an in-process store's bodies.
                weakref.finalize(self, shutil.rmtree, path, True)
            files = self._files

        def reserve(nbytes: int) -> None:
            with self._lock:
                self._ledger.reserve(self.max_stored_bytes, (task_id, kind), nbytes)

        def release(nbytes: int) -> None:
            with self._lock:
                self._ledger.release((task_id, kind), nbytes)

        return files.sink(task_id, kind, reserve=reserve, release=release)

    @property
    def stored_bytes(self) -> int:
        """The bytes of spooled bodies held now, written and reserved."""
        return self._ledger.total

    def want_room(self, seconds: float) -> None:
        with self._lock:
            self._ledger.want(seconds, self.clock())

    def _drop_bodies(self, task_id: str, *kinds: BodyKind) -> None:
        # With the lock held.
        if self._files is None:
            return
        for kind in kinds or ("request", "result"):
            if self._ledger.drop((task_id, kind)):
                self._files.remove(task_id, kind)

    def close(self) -> None:
        with self._lock:
            files, self._files = self._files, None
            lock, self._dir_lock = self._dir_lock, None
            self._ledger = _Ledger()
        if files is not None:
            shutil.rmtree(files.path, ignore_errors=True)
        if lock is not None:
            with contextlib.suppress(OSError):
                os.close(lock)


class _Deliveries:
    """Completion callbacks not yet settled, and when each is due. Called
    with the store's lock held."""

    def __init__(self) -> None:
        self._due: dict[str, tuple[Delivery, float]] = {}

    def add(self, delivery: Delivery, at: float) -> None:
        self._due[delivery.task_id] = (delivery, at)

    def claim(self, now: float, lease: float, limit: int) -> list[Delivery]:
        due = sorted((at, task_id) for task_id, (_, at) in self._due.items() if at <= now)
        claimed = []
        for _, task_id in due[:limit]:
            delivery = replace(self._due[task_id][0], claim=secrets.token_hex(8))
            self._due[task_id] = (delivery, now + lease)
            claimed.append(replace(delivery))
        return claimed

    def settle(self, delivery: Delivery, retry_at: float | None) -> bool:
        held = self._due.get(delivery.task_id)
        if held is None or not delivery.claim or held[0].claim != delivery.claim:
            return False
        if retry_at is None:
            del self._due[delivery.task_id]
        else:
            again = replace(held[0], attempts=held[0].attempts + 1, claim="")
            self._due[delivery.task_id] = (again, retry_at)
        return True


class _Ledger:
    """The bytes of spooled bodies held, per (task, kind): what the byte
    budget counts (:mod:`.budget` has its rule). Called with the store's lock
    held."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, BodyKind], int] = {}
        self.total = 0
        # Until when a writer waits for room: new tasks are refused till then.
        self.wanted_until = 0.0

    def check(self, limit: int | None, room: int = 0, now: float | None = None) -> None:
        """Room for a new body (``room`` bytes of it); ``now`` is given by a
        submission only: it also waits while a writer does."""
        check_room(limit, self.total, room, now is not None and now < self.wanted_until)

    def reserve(self, limit: int | None, key: tuple[str, BodyKind], nbytes: int) -> None:
        if limit is not None and self.total + nbytes > limit:
            raise BudgetSpent(limit)
        self.held[key] = self.held.get(key, 0) + nbytes
        self.total += nbytes

    def release(self, key: tuple[str, BodyKind], nbytes: int) -> None:
        held = self.held.get(key)
        if held is not None:
            nbytes = min(nbytes, held)
            if held == nbytes:
                del self.held[key]
            else:
                self.held[key] = held - nbytes
            self.total -= nbytes

    def drop(self, key: tuple[str, BodyKind]) -> bool:
        """Give back all a body held; whether it held any."""
        held = self.held.pop(key, None)
        if held is None:
            return False
        self.total -= held
        return True

    def want(self, seconds: float, now: float) -> None:
        self.wanted_until = max(self.wanted_until, now + seconds) if seconds else 0.0


class _Wakeups:
    """Who waits on the store's tasks, in this process, and how they wake;
    every method but :meth:`listen` is called with the store's lock held."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        # A task's waiters block on one lock taken when the first of them
        # came; finishing or deleting the task releases it, and each waiter
        # releases it again as it wakes, so that the next one wakes too.
        # Cheaper than an Event on the path of every ``Prefer: wait``.
        self._waiters: dict[str, _thread.LockType] = {}
        # Watchers (event streams) wait here for any change of state or
        # progress; ``_version`` counts the changes, so that none is missed
        # between a watcher's read and its wait.
        self._changed = threading.Condition(lock)
        self._version = 0
        # How many watchers listen now: a change wakes them only if there are
        # any, so that tasks nobody streams pay nothing for the streams.
        self._watchers = 0

    def gate(self, task_id: str) -> _thread.LockType:
        """The lock a waiter for ``task_id`` blocks on (held until a wake)."""
        gate = self._waiters.get(task_id)
        if gate is None:
            gate = self._waiters[task_id] = _thread.allocate_lock()
            gate.acquire()
        return gate

    def wake(self, task_id: str) -> None:
        gate = self._waiters.pop(task_id, None)
        if gate is not None:
            gate.release()

    def changed(self) -> None:
        """Some task's state or progress changed. A watcher counts itself
        before it reads the version it waits past, so none can be waiting
        unseen here."""
        self._version += 1
        if self._watchers:
            self._changed.notify_all()

    @contextmanager
    def listen(self) -> Iterator[Callable[[float], None]]:
        with self._lock:
            seen = self._version
            self._watchers += 1

        def block(timeout: float) -> None:
            nonlocal seen
            with self._changed:
                self._changed.wait_for(lambda: self._version != seen, timeout)
                seen = self._version

        try:
            yield block
        finally:
            with self._lock:
                self._watchers -= 1


def _snapshot(record: TaskRecord) -> TaskRecord:
    # Spelled out, in the fields' order (positional arguments are the cheapest
    # call): dataclasses.replace() costs several times more, on the path of
    # every submission and every poll. tests/test_pay_for_use.py holds the
    # order to the class's fields.
    return TaskRecord(
        record.id,
        record.state,
        record.created,
        record.started,
        record.finished,
        record.progress,
        record.result,
        record.owner,
        record.lease_until,
        record.ttl,
        record.callback,
    )
