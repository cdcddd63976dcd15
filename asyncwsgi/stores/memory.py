"""The in-process store: the default, for one process (any number of threads)."""

from __future__ import annotations

import _thread
import bisect
import contextlib
import heapq
import os
import secrets
import shutil
import threading
import time
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
from .base import ACTIVE, Store, StoreFull, lapsed
from .files import ResultsDir, process_dir

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Tasks in a dict, guarded by one lock.

    Expiry is driven by a heap of finish deadlines and costs O(expired tasks)
    on the calls that touch the table; no sweeper thread, no full scan.
    An expired task leaves a tombstone (a poll gets 410 Gone) for
    ``tombstone_ttl`` seconds; ``max_tombstones`` bounds how many are kept,
    the oldest forgotten first. A forgotten id answers 404. Reads return
    copies: a record handed out never changes under its reader.

    Bodies spooled out of memory (results and request bodies above the
    middleware's ``spool_threshold``) are files in a directory of this
    process's own under ``results_dir`` (by default in the temporary
    directory), removed with their task; a directory left by a process that
    crashed is removed when the next store under the same ``results_dir``
    spools its first body. ``max_stored_bytes`` bounds the bytes of those
    files.

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
        self._stored: dict[tuple[str, BodyKind], int] = {}
        self.stored_bytes = 0
        self._room_wanted_until = 0.0
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskRecord] = {}
        self._active: set[str] = set()
        self._deadlines: list[tuple[float, str]] = []
        self._tombstones: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._keys: dict[str, KeyEntry] = {}
        self._key_of: dict[str, str] = {}
        # A task's waiters block on one lock taken when the first of them
        # came; finishing or deleting the task releases it, and each waiter
        # releases it again as it wakes, so that the next one wakes too.
        # Cheaper than an Event on the path of every ``Prefer: wait``.
        self._waiters: dict[str, _thread.LockType] = {}
        # Watchers (event streams) wait here for any change of state or
        # progress; ``_version`` counts the changes, so that none is missed
        # between a watcher's read and its wait.
        self._changed = threading.Condition(self._lock)
        self._version = 0
        # How many watchers listen now: a change wakes them only if there are
        # any, so that tasks nobody streams pay nothing for the streams.
        self._watchers = 0
        # The task list's index: per (owner, state), and per (owner, None) for
        # every state, the live tasks' (created, id) in ascending order. None
        # until the list is first read: built then from the table, kept up
        # from then on; a process whose list is off never pays for it.
        self._listed: dict[tuple[str | None, State | None], list[tuple[float, str]]] | None = None
        # Completion callbacks not yet settled, and when each is due.
        self._deliveries: dict[str, tuple[Delivery, float]] = {}

    def _insert(
        self,
        record: TaskRecord,
        key: str | None,
        fingerprint: str | None,
        limit: int | None,
        room: int,
    ) -> Created:
        with self._lock:
            now = time.time()
            self._expire(now)
            if key is not None:
                existing = self._keys.get(key)
                if existing is not None:
                    return Created(False, existing)
            if limit is not None and len(self._active) >= limit:
                return Created(False)
            self._check_budget(room, now)
            self._tasks[record.id] = _snapshot(record)
            self._active.add(record.id)
            if self._listed is not None:
                self._index(record, None, record.state)
            if key is not None:
                self._keys[key] = KeyEntry(record.id, fingerprint)
                self._key_of[record.id] = key
            return Created(True)

    def _read(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            self._expire(time.time())
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
                self._index(record, "queued", "running")
            self._touch()
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
                self._touch()

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
                self._index(record, record.state, "done")
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
                self._deliveries[task_id] = (delivery, now)
            record.state = "done"
            record.finished = now
            record.result = result
            record.lease_until = None
            self._active.discard(task_id)
            self._touch()
            heapq.heappush(self._deadlines, (now + record.ttl, task_id))
            self._wake(task_id)
            return True

    def _delete(self, task_id: str) -> bool:
        with self._lock:
            record = self._tasks.pop(task_id, None)
            if record is None:
                return False
            if self._listed is not None:
                self._index(record, record.state, None)
            self._active.discard(task_id)
            self._touch()
            self._drop_key(task_id)
            self._drop_bodies(task_id)
            self._wake(task_id)
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
            gate = self._waiters.get(task_id)
            if gate is None:
                gate = self._waiters[task_id] = _thread.allocate_lock()
                gate.acquire()
        if gate.acquire(timeout=max(0.0, timeout)):
            gate.release()

    def _wake(self, task_id: str) -> None:
        gate = self._waiters.pop(task_id, None)
        if gate is not None:
            gate.release()

    @contextmanager
    def _listen(self, task_id: str) -> Iterator[Callable[[float], None]]:
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

    def _touch(self) -> None:
        # With the lock held: a change of some task's state or progress. A
        # watcher counts itself before it reads the version it waits past,
        # so none can be waiting unseen here.
        self._version += 1
        if self._watchers:
            self._changed.notify_all()

    def _list(
        self,
        owner: str | None,
        state: State | None,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[TaskRecord]:
        with self._lock:
            self._expire(time.time())
            if self._listed is None:
                self._build_index()
            assert self._listed is not None
            index = self._listed.get((owner, state), [])
            end = len(index) if before is None else bisect.bisect_left(index, before)
            page = [
                self._tasks[task_id] for _, task_id in reversed(index[max(0, end - limit) : end])
            ]
            return [
                replace(
                    record,
                    result=None
                    if record.result is None
                    else Result(record.result.status, record.result.headers, b""),
                )
                for record in page
            ]

    def _build_index(self) -> None:
        """With the lock held: the list's index of every live task, once."""
        listed: dict[tuple[str | None, State | None], list[tuple[float, str]]] = {}
        for record in self._tasks.values():
            entry = (record.created, record.id)
            for key in ((record.owner, record.state), (record.owner, None)):
                listed.setdefault(key, []).append(entry)
        for index in listed.values():
            index.sort()
        self._listed = listed

    def _index(self, record: TaskRecord, old: State | None, new: State | None) -> None:
        """With the lock held, once the list was read (``_listed`` is not
        None): move a task in the list's index from state ``old`` to ``new``
        (None: not listed)."""
        listed = self._listed
        assert listed is not None
        entry = (record.created, record.id)
        if old is not None:
            for key in ((record.owner, old), (record.owner, None)):
                index = listed.get(key)
                if index is not None:
                    at = bisect.bisect_left(index, entry)
                    if at < len(index) and index[at] == entry:
                        del index[at]
                    if not index:
                        del listed[key]
        if new is not None:
            for key in ((record.owner, new), (record.owner, None)):
                bisect.insort(listed.setdefault(key, []), entry)

    def _claim_callbacks(self, now: float, lease: float, limit: int) -> list[Delivery]:
        with self._lock:
            due = sorted(
                (at, task_id) for task_id, (_, at) in self._deliveries.items() if at <= now
            )[:limit]
            claimed = []
            for _, task_id in due:
                delivery = replace(self._deliveries[task_id][0], claim=secrets.token_hex(8))
                self._deliveries[task_id] = (delivery, now + lease)
                claimed.append(replace(delivery))
            return claimed

    def _settle_callback(self, delivery: Delivery, retry_at: float | None) -> bool:
        with self._lock:
            held = self._deliveries.get(delivery.task_id)
            if held is None or not delivery.claim or held[0].claim != delivery.claim:
                return False
            if retry_at is None:
                del self._deliveries[delivery.task_id]
            else:
                again = replace(held[0], attempts=held[0].attempts + 1, claim="")
                self._deliveries[delivery.task_id] = (again, retry_at)
            return True

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
                self._index(record, record.state, None)
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
            self._check_budget()
            if self._files is None:
                path, self._dir_lock = process_dir(self.results_dir)
                self._files = ResultsDir(path)
                # Also when the process exits without close(): nobody else
                # can read an in-process store's bodies.
                weakref.finalize(self, shutil.rmtree, path, True)
            files = self._files

        def reserve(nbytes: int) -> None:
            with self._lock:
                limit = self.max_stored_bytes
                if limit is not None and self.stored_bytes + nbytes > limit:
                    raise StoreFull(f"the store's byte budget (max_stored_bytes={limit}) is spent")
                self._stored[task_id, kind] = self._stored.get((task_id, kind), 0) + nbytes
                self.stored_bytes += nbytes

        def release(nbytes: int) -> None:
            with self._lock:
                held = self._stored.get((task_id, kind))
                if held is not None:
                    nbytes = min(nbytes, held)
                    if held == nbytes:
                        del self._stored[task_id, kind]
                    else:
                        self._stored[task_id, kind] = held - nbytes
                    self.stored_bytes -= nbytes

        return files.sink(task_id, kind, reserve=reserve, release=release)

    def _check_budget(self, room: int = 0, now: float | None = None) -> None:
        # With the lock held. ``now`` is given by a submission only: it also
        # waits while a writer does.
        limit = self.max_stored_bytes
        if limit is not None and (
            self.stored_bytes + room > limit
            or self.stored_bytes >= limit
            or (now is not None and now < self._room_wanted_until)
        ):
            raise StoreFull(f"the store's byte budget (max_stored_bytes={limit}) is spent")

    def want_room(self, seconds: float) -> None:
        with self._lock:
            now = time.time()
            self._room_wanted_until = (
                max(self._room_wanted_until, now + seconds) if seconds else 0.0
            )

    def _drop_bodies(self, task_id: str, *kinds: BodyKind) -> None:
        # With the lock held.
        if self._files is None:
            return
        for kind in kinds or ("request", "result"):
            held = self._stored.pop((task_id, kind), None)
            if held is not None:
                self.stored_bytes -= held
                self._files.remove(task_id, kind)

    def close(self) -> None:
        with self._lock:
            files, self._files = self._files, None
            lock, self._dir_lock = self._dir_lock, None
            self._stored.clear()
            self.stored_bytes = 0
        if files is not None:
            shutil.rmtree(files.path, ignore_errors=True)
        if lock is not None:
            with contextlib.suppress(OSError):
                os.close(lock)


def _snapshot(record: TaskRecord) -> TaskRecord:
    # Spelled out: dataclasses.replace() costs several times more, on the
    # path of every submission and every poll.
    return TaskRecord(
        record.id,
        state=record.state,
        created=record.created,
        started=record.started,
        finished=record.finished,
        progress=record.progress,
        result=record.result,
        owner=record.owner,
        lease_until=record.lease_until,
        ttl=record.ttl,
        callback=record.callback,
    )
