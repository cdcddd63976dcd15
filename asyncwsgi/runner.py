"""Run one task: call the app with the task's environ and store what it answers.

The same runner serves the thread pool and remote workers (Celery), so a task
behaves the same wherever it runs.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from typing import TYPE_CHECKING

from .capture import ResponseTooLarge, capture
from .environ import task_environ
from .results import error_result
from .stores.base import Store
from .task import Result, TaskHandle

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from .task import Job

__all__ = ["TaskRunner"]

logger = logging.getLogger("asyncwsgi")


class TaskRunner:
    """Runs jobs against ``app`` and writes results to ``store``.

    While tasks run, one heartbeat thread (only for shared stores, where
    another process may judge a lease) extends their leases every third of
    ``lease``. With a ``timeout``, one watchdog thread ends as 504 a task not
    done that long after it was accepted (see :meth:`watch`), queued or
    running; the app's thread cannot be stopped and finishes on its own, its
    late result dropped, and the pool never grows past its size.
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: Store,
        *,
        max_result: int,
        lease: float,
        timeout: float | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.max_result = max_result
        self.lease = lease
        self.timeout = timeout
        self._deadlines: list[tuple[float, str]] = []
        self._watchdog: threading.Thread | None = None
        self._wake = threading.Condition(threading.Lock())
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def held(self) -> list[str]:
        """Tasks this process runs, or holds queued in its pool."""
        with self._lock:
            return list(self._held)

    def hold(self, task_id: str) -> None:
        """Keep the lease of a task queued in this process's pool alive, so that
        it dies with the process (and is then answered as lost) rather than
        staying queued for ever."""
        with self._lock:
            self._held.add(task_id)
        if self._heartbeat is None:
            self._start_heartbeat()

    def run(self, job: Job) -> None:
        task_id = job.task_id
        # An in-process store dies with the process: nothing to lease there.
        lease_until = time.time() + self.lease if self.store.shared else float("inf")
        if not self.store.start(task_id, lease_until):
            with self._lock:
                self._held.discard(task_id)
            return  # deleted while queued: it never runs
        with self._lock:
            self._held.add(task_id)
        if self.store.shared and self._heartbeat is None:
            self._start_heartbeat()

        result: Result | None = None
        try:
            environ = task_environ(job.environ, job.body)
            environ["asyncwsgi.task"] = TaskHandle(task_id, self.store)
            result = capture(self.app, environ, self.max_result)
        except ResponseTooLarge as exc:
            logger.error("asyncwsgi: task %s failed: %s", task_id, exc)
        except Exception:
            logger.exception("asyncwsgi: task %s failed in the app", task_id)
        finally:
            # Also on BaseException (SystemExit in the app): never left running.
            try:
                self.store.finish(task_id, result if result is not None else error_result(500))
            finally:
                with self._lock:
                    self._held.discard(task_id)

    def fail_running(self, message: str) -> None:
        """End every task this process still holds as a 500 (a shutdown that
        cannot wait for them)."""
        for task_id in self.held:
            self.store.finish(task_id, error_result(500, message))

    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is not None:
                return
            self._heartbeat = threading.Thread(
                target=self._beat, name="asyncwsgi-heartbeat", daemon=True
            )
            self._heartbeat.start()

    def _beat(self) -> None:
        interval = max(0.05, self.lease / 3)
        while not self._stop.wait(interval):
            running = self.held
            if running:
                try:
                    self.store.heartbeat(running, time.time() + self.lease)
                except Exception:
                    logger.exception("asyncwsgi: heartbeat failed")

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
            with self._wake:
                now = time.monotonic()
                due = []
                while deadlines and deadlines[0][0] <= now:
                    due.append(heapq.heappop(deadlines)[1])
                if not due:
                    self._wake.wait(deadlines[0][0] - now if deadlines else 1.0)
                    continue
            for task_id in due:
                # finish() is a no-op for tasks already done or deleted
                if self.store.finish(task_id, error_result(504, "the task ran past its timeout")):
                    logger.error("asyncwsgi: task %s ran past its timeout", task_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the heartbeat and the watchdog, and wait (up to ``timeout``
        seconds) for a call of theirs already under way: once this returns,
        neither touches the store again, so it may be closed."""
        self._stop.set()
        with self._wake:
            self._wake.notify()
        current = threading.current_thread()
        for thread in (self._heartbeat, self._watchdog):
            if thread is not None and thread is not current:
                thread.join(timeout)
