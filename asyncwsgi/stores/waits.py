"""Waiting for a task: a long poll's wait for the end, an event stream's
wait for the next change. Written once on two primitives, woken where the
store can (a condition, a Redis list or channel), reading again where it
cannot."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable

from ..task import TaskRecord
from .primitives import Primitives

__all__ = ["ACTIVE", "Waits", "changed"]

# The states of a task that is not finished yet.
ACTIVE = ("queued", "running")

# The generic wait() reads again after a sleep that grows from the first to
# the last value: a short task answers at once, a long wait costs at most ten
# cheap reads a second.
_POLL_FIRST = 0.005
_POLL_LAST = 0.1


def changed(seen: TaskRecord | None, record: TaskRecord | None) -> bool:
    """Whether a watcher that saw ``seen`` has something new to show: another
    state or other progress."""
    if seen is None or record is None:
        return seen is not record
    return seen.state != record.state or seen.progress != record.progress


class Waits(Primitives):
    """:meth:`wait` and :meth:`watch`, on :meth:`get` (the store's read with
    the lease rule applied) and the primitives ``_block`` and ``_listen``."""

    #: The store's clock (:attr:`Store.clock <asyncwsgi.stores.base.Store.clock>`).
    clock: Callable[[], float]

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The record with the lease rule applied (the interface's, in Store)."""

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
                remaining = min(remaining, max(0.001, record.lease_until - self.clock() + 0.001))
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
                    until_lapsed = record.lease_until - self.clock() + 0.001
                    remaining = min(remaining, max(0.001, until_lapsed))
                block(remaining)
