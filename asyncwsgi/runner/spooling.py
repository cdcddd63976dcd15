"""The spooled capture of a task's result: in memory up to ``spool_threshold``,
then in the store, with room for its worst case reserved first; and the way a
task that ended while its app was still answering stops it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..capture import Spool
from ..logs import task_extra
from ..stores.base import Store, StoreUnavailable
from ..task import BodySink

__all__ = ["ResultSpools", "quietly"]

logger = logging.getLogger("asyncwsgi")

# A result's writer waiting for room in the byte budget looks again after a
# delay that doubles from the first value up to the last; without a
# queue_timeout it waits the patience.
_ROOM_FIRST = 0.05
_ROOM_POLL = 1.0
_ROOM_PATIENCE = 600.0


def quietly(task_id: str, call: Callable[..., object], *args: object) -> None:
    """A store call whose failure (an outage) costs only a moment: the
    budget's mark lapses, a sweep removes a file, Redis reaps a ledger entry.
    Logged, not raised."""
    try:
        call(*args)
    except StoreUnavailable as exc:
        logger.warning("asyncwsgi: task %s: %s", task_id, exc, extra=task_extra(task_id))


class ResultSpools:
    """Makes the spool of each running task's result (:meth:`spool`), and
    ends it when the task ends elsewhere (:meth:`cancel`).

    A result above ``threshold`` goes to the store (``opened()`` is called
    the first time: the janitor starts), with ``max_result`` reserved before
    the first byte is written, so a task once accepted never finds the byte
    budget spent halfway. While the budget has no such room, the app's thread
    waits for it (results expire, tasks end and give back what they did not
    use); meanwhile new submissions are refused (``Store.want_room``), so the
    room goes to work already accepted. A store outage meanwhile only
    prolongs the wait. The wait ends when the task does (deleted, or past its
    timeout), or after ``patience`` seconds (``queue_timeout``): then the
    result is not stored and the task ends as 500 with the reason.
    """

    def __init__(
        self,
        store: Store,
        *,
        threshold: int,
        max_result: int,
        patience: float | None,
        opened: Callable[[], None],
    ) -> None:
        self.store = store
        self.threshold = threshold
        self.max_result = max_result
        self.patience = patience or _ROOM_PATIENCE
        self._opened = opened
        self._running: dict[str, Spool] = {}
        self._lock = threading.Lock()

    def spool(self, task_id: str) -> Spool:
        """A new spool for the task's result, ended by :meth:`cancel` until
        :meth:`done`."""
        spool = Spool(self.threshold, lambda: self._open(task_id), limit=self.max_result)
        with self._lock:
            self._running[task_id] = spool
        return spool

    def done(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def cancel(self, task_id: str) -> None:
        """The task ended while its app was answering (past its timeout,
        deleted): its next chunk raises :class:`~asyncwsgi.capture.TaskEnded`."""
        with self._lock:
            spool = self._running.get(task_id)
        if spool is not None:
            spool.ended = True

    def _open(self, task_id: str) -> BodySink:
        worst = self.max_result
        deadline = time.monotonic() + self.patience
        delay = _ROOM_FIRST
        waited = False
        while True:
            sink: BodySink | None = None
            try:
                sink = self.store.open_sink(task_id, "result")  # full: no room either
                sink.reserve(worst)
            except StoreUnavailable:
                # No room (StoreFull), or a store that cannot say now (an
                # outage): either way the task waits, the app's work kept.
                if sink is not None:
                    quietly(task_id, sink.discard)
                if time.monotonic() + delay > deadline or self._gone(task_id):
                    raise
            else:
                self._opened()
                if waited:
                    # Else the mark lapses by itself a second after the last renewal.
                    quietly(task_id, self.store.want_room, 0)
                    logger.info(
                        "asyncwsgi: task %s got room for its result",
                        task_id,
                        extra=task_extra(task_id),
                    )
                return sink
            if not waited:
                waited = True
                logger.warning(
                    "asyncwsgi: task %s waits for room in the byte budget for its result "
                    "(%d bytes, its max_result): new tasks are refused meanwhile",
                    task_id,
                    worst,
                    extra=task_extra(task_id),
                )
            # Long enough to outlast the sleep: no gap for a submission.
            quietly(task_id, self.store.want_room, delay + 1.0)
            time.sleep(delay)
            delay = min(delay * 2, _ROOM_POLL)

    def _gone(self, task_id: str) -> bool:
        """Whether a task waiting for room has ended meanwhile (deleted, past
        its timeout, lost); a store that cannot tell now says no."""
        try:
            record = self.store.get(task_id)
        except StoreUnavailable:
            return False
        return record is None or record.state != "running"
