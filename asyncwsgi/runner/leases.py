"""Leases: how a task's time is kept, in the process that holds it and in
every process that shares its store.

- The heartbeat extends the leases of the tasks this process holds, every
  third of ``lease`` (only with a shared store, where another process may
  judge a lease).
- The watchdog ends as 504 a task not done ``timeout`` seconds after it was
  accepted, queued or running.
- The sweeper has the store end as lost every task whose lease has lapsed
  (:meth:`~asyncwsgi.stores.base.Store.reclaim`) every few seconds, with no
  request needed: a task whose process died gives back its byte budget and
  has its "lost" callback sent though nobody reads it.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

from .. import metrics
from ..logs import task_extra
from ..periodic import Periodic
from ..results import error_result
from ..stores.base import Store, StoreUnavailable
from ..task import Result
from .finish import finished

__all__ = ["Leases", "sweep_period"]

logger = logging.getLogger("asyncwsgi")

# The watchdog's wait after a round that failed for a reason other than the
# store (a bug): it goes on, but does not spin.
_WATCHDOG_PAUSE = 2.0


def sweep_period(lease: float) -> float:
    """How often each process sweeps: half a lease, between half a second and
    five (one indexed read of the store each time), so a lapsed task ends
    within ``lease`` and a few seconds."""
    return min(5.0, max(0.5, lease / 2))


class Leases:
    """The tasks this process holds, their heartbeat, their timeouts, and the
    sweep of lapsed leases.

    ``end`` stores a task's final result (or keeps it for a retry) and
    ``cancel`` tells the task's writer to stop: the watchdog calls both for a
    task past its ``timeout``. Each thread starts the first time it has
    something to do, and survives a bad round.
    """

    def __init__(
        self,
        store: Store,
        *,
        lease: float,
        timeout: float | None,
        end: Callable[[str, Result], None],
        cancel: Callable[[str], None],
    ) -> None:
        self.store = store
        self.lease = lease
        self.timeout = timeout
        self._end = end
        self._cancel = cancel
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat = Periodic(
            "asyncwsgi-heartbeat",
            self._beat,
            max(0.05, lease / 3),
            what="heartbeat",
            outage=(StoreUnavailable,),
        )
        self._sweeper = Periodic(
            "asyncwsgi-sweeper",
            store.reclaim,
            sweep_period(lease),
            what="sweeping lapsed leases",
            jitter=0.2,
            survive_fork=True,
            outage=(StoreUnavailable,),
        )
        self._deadlines: list[tuple[float, str]] = []
        self._wake = threading.Condition(threading.Lock())
        self._watchdog: threading.Thread | None = None

    # -- the tasks held here, and their heartbeat --------------------------

    @property
    def held(self) -> list[str]:
        """Tasks this process runs, or holds queued in its pool."""
        with self._lock:
            return list(self._held)

    def hold(self, task_id: str) -> None:
        """Keep the task's lease alive from now on (a shared store only: an
        in-process store dies with the process, nothing to lease there)."""
        with self._lock:
            self._held.add(task_id)
        if self.store.shared and not self._heartbeat.running:
            self._heartbeat.start()

    def release(self, task_id: str) -> None:
        with self._lock:
            self._held.discard(task_id)

    def _beat(self) -> None:
        running = self.held
        if running:
            self.store.heartbeat(running, time.time() + self.lease)

    # -- the sweeper -------------------------------------------------------

    def sweep(self) -> None:
        """Start the sweeper in this process (and in processes forked from it
        later), for a store shared with other processes: those are the ones
        whose tasks can lapse."""
        if self.store.shared:
            self._sweeper.start()

    # -- the watchdog ------------------------------------------------------

    def watch(self, task_id: str, within: float | None = None) -> None:
        """Start the clock of an accepted task: ``within`` seconds from now, or
        ``timeout`` when not given (nothing when neither is set)."""
        seconds = self.timeout if within is None else within
        if seconds is None:
            return
        deadline = time.monotonic() + max(0.0, seconds)
        with self._wake:
            heapq.heappush(self._deadlines, (deadline, task_id))
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._expire_overdue, name="asyncwsgi-watchdog", daemon=True
                )
                self._watchdog.start()
            self._wake.notify()

    def _expire_overdue(self) -> None:
        deadlines = self._deadlines
        while not self._stop.is_set():
            try:
                with self._wake:
                    now = time.monotonic()
                    due = []
                    while deadlines and deadlines[0][0] <= now:
                        due.append(heapq.heappop(deadlines)[1])
                    if not due:
                        self._wake.wait(deadlines[0][0] - now if deadlines else 1.0)
                        continue
                for task_id in due:
                    self._time_out(task_id)
            # Broad on purpose: the watchdog must outlive a bad round, or no
            # task of this process would ever time out again.
            except Exception:
                logger.exception("asyncwsgi: the timeout watchdog failed a round; going on")
                self._stop.wait(_WATCHDOG_PAUSE)

    def _time_out(self, task_id: str) -> None:
        # finish() is a no-op for tasks already done or deleted
        result = error_result(504, "the task ran past its timeout")
        try:
            ended = self.store.finish(task_id, result)
        except StoreUnavailable as exc:
            logger.error(
                "asyncwsgi: task %s ran past its timeout; storing its 504 failed (%s): retrying",
                task_id,
                exc,
                extra=task_extra(task_id),
            )
            self._cancel(task_id)
            self._end(task_id, result)
            return
        if ended:
            logger.error(
                "asyncwsgi: task %s ran past its timeout", task_id, extra=task_extra(task_id)
            )
            if metrics.INSTRUMENTS is not None:
                metrics.INSTRUMENTS.timed_out.inc()
            finished(task_id, result)
            self._cancel(task_id)

    # -- stopping ----------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread, and wait (up to ``timeout`` seconds) for a call
        of theirs already under way: once this returns, none touches the
        store again."""
        self._stop.set()
        with self._wake:
            self._wake.notify()
        self._heartbeat.stop(timeout)
        self._sweeper.stop(timeout)
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join(timeout)
