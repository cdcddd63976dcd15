"""Run one task: call the app with the task's environ and store what it answers.

The same runner serves the thread pool and remote workers (Celery), so a task
behaves the same wherever it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .. import metrics
from ..capture import ResponseTooLarge, Spool, TaskEnded, capture
from ..environ import task_environ
from ..logs import current_task_id, task_extra
from ..results import error_result, store_full_result, too_large_result
from ..stores.base import BodyRemoved, Store, StoreFull, StoreUnavailable
from ..stores.budget import BudgetSpent
from ..stores.upkeep import janitor
from ..task import Result
from ..tracing import INSTALLED as TRACING
from ..tracing import end_run, inject, start_run
from .finish import Finisher, finished, settle
from .handle import TaskHandle
from .leases import Leases
from .spooling import ResultSpools

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from opentelemetry.trace import Span

    from ..job import Job

__all__ = ["TaskRunner"]

logger = logging.getLogger("asyncwsgi")

# A start that failed is tried again after a delay that doubles from the
# first value up to the last: quick after a blip, one call every two seconds
# during a long outage.
_RETRY_FIRST = 0.05
_RETRY_LAST = 2.0
# How long a pool thread keeps trying to start a task while the store is
# unavailable, at least: a store back within that (a restart) and the task
# runs; past it the task ends as 503 (never started, safe to submit again).
# A shared store's task waits as long as its lease would hold (30 s by
# default), so that a failover of Redis (a few seconds) costs no task.
_START_PATIENCE = 5.0
_NOT_STARTED = "the task could not be started: the task store was unavailable"


def _why(exc: StoreUnavailable) -> str:
    """What the client is told of a store fault: its kind, never the store's
    own message (which may name paths or hosts)."""
    if not isinstance(exc, StoreFull):
        return "the task store was unavailable"
    if isinstance(exc, BudgetSpent):
        return "the store's byte budget (max_stored_bytes) is spent"
    return "no space left in the task store"


class TaskRunner:
    """Runs jobs against ``app`` and writes results to ``store``.

    One job at a time per calling thread (:meth:`run`); the duties around it
    live in their own homes, each started the first time it has work:

    - :class:`~asyncwsgi.runner.leases.Leases`: the heartbeat of the tasks
      held here, the ``timeout`` watchdog (a task not done that long after it
      was accepted ends as 504; the app's thread finishes on its own, its
      late result dropped), and the sweeper of lapsed leases;
    - :class:`~asyncwsgi.runner.finish.Finisher`: the final result stored,
      or retried in the background while the store is unavailable;
    - :class:`~asyncwsgi.runner.spooling.ResultSpools`: the result spooled to
      the store above ``spool_threshold``, with ``max_result`` reserved
      first, and stopped when the task ends elsewhere (:meth:`cancel`);
    - the store's janitor (:func:`~asyncwsgi.stores.upkeep.janitor`), once
      this process spools a body.
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: Store,
        *,
        max_result: int,
        lease: float,
        timeout: float | None = None,
        queue_timeout: float | None = None,
        spool_threshold: int = 2**20,
    ) -> None:
        self.app = app
        self.store = store
        self.max_result = max_result
        self.spool_threshold = spool_threshold
        self.lease = lease
        self.timeout = timeout
        self.queue_timeout = queue_timeout
        self.leases = Leases(
            store, lease=lease, timeout=timeout, end=self.deliver, cancel=self.cancel
        )
        self.janitor = janitor(store)
        self.finisher = Finisher(store, self.leases.release)
        self.spools = ResultSpools(
            store,
            threshold=spool_threshold,
            max_result=max_result,
            patience=queue_timeout,
            opened=self.keep_clean,
        )
        self._stop = threading.Event()

    @property
    def held(self) -> list[str]:
        """Tasks this process runs, or holds queued in its pool."""
        return self.leases.held

    def hold(self, task_id: str) -> None:
        """Keep the lease of a task queued in this process's pool alive, so that
        it dies with the process (and is then answered as lost) rather than
        staying queued for ever."""
        self.leases.hold(task_id)

    def run(self, job: Job) -> None:
        """Start the task, call the app, store what it answers. Never raises
        (except a ``KeyboardInterrupt`` or ``SystemExit`` in the main thread,
        after the task was ended): whatever happens, the task ends."""
        if self._begin(job.task_id):
            self._run(job)

    def _begin(self, task_id: str) -> bool:
        """Move the task to running, held by this process. False when it is
        not to run: deleted while queued, or ended here as 503 (the store was
        unavailable for longer than a restart takes)."""
        try:
            started = self._start(task_id)
        except BaseException as exc:
            if not isinstance(exc, StoreUnavailable):
                # A bug, not a store fault: the task ends as 500, and the
                # error goes on to the caller, which logs it.
                self.deliver(task_id, error_result(500))
                raise
            logger.error(
                "asyncwsgi: task %s could not start, the store was unavailable for %.0f s "
                "(%s): ending it as 503",
                task_id,
                self._start_patience(),
                exc,
                extra=task_extra(task_id),
            )
            self.deliver(task_id, error_result(503, _NOT_STARTED))
            return False
        if not started:
            self.leases.release(task_id)
            return False  # deleted while queued: it never runs
        self.leases.hold(task_id)
        return True

    def _run(self, job: Job) -> None:
        task_id = job.task_id
        # The app's own log records name the task too (logs.TaskIdFilter).
        context = current_task_id.set(task_id)
        extra = task_extra(task_id)
        begun = time.time()
        accepted = job.accepted
        span = (
            start_run(job.environ, task_id, accepted, begun, job.trace_parent) if TRACING else None
        )
        instruments = metrics.INSTRUMENTS
        counted = instruments.of(job.pattern) if instruments is not None else None
        if counted is not None:
            counted.queue_wait.observe(max(0.0, begun - accepted))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("asyncwsgi: task %s started", task_id, extra=extra)
        spool = self.spools.spool(task_id)
        result, failure, stop = self._call(job, spool, span)
        self.spools.done(task_id)
        if counted is not None:
            counted.run_time.observe(time.time() - begun)
        try:
            if result is None:
                # What was spooled goes, and its bytes back to the budget,
                # before the error is stored.
                settle(task_id, spool, False)
                self.deliver(task_id, failure or error_result(500))
            else:
                self.deliver(task_id, result, spool)
        finally:
            if span is not None:
                end_run(span, None if result is None else result.status)
            current_task_id.reset(context)
        if stop is not None:
            raise stop

    def _call(
        self, job: Job, spool: Spool, span: Span | None
    ) -> tuple[Result | None, Result | None, BaseException | None]:
        """Call the app with the task's environ. Its result, or None and what
        to store instead (None: a plain 500); and what to pass on once the
        task is ended (an exit of the process itself)."""
        task_id = job.task_id
        extra = task_extra(task_id)
        stream = None
        try:
            environ = task_environ(job.environ, job.body)
            # The app (or a middleware of its) may replace wsgi.input: close ours.
            stream = environ["wsgi.input"]
            environ["asyncwsgi.task"] = TaskHandle(task_id, self.store)
            if span is not None:
                inject(environ, span)  # the app's server span continues the trace
            return capture(self.app, environ, spool=spool), None, None
        except ResponseTooLarge as exc:
            logger.error("asyncwsgi: task %s failed: %s", task_id, exc, extra=extra)
            return None, too_large_result(self.max_result), None
        except (TaskEnded, BodyRemoved):
            # Deleted, past its timeout or lost: its answer is not wanted, and
            # the bytes reserved for it are given back already.
            logger.info(
                "asyncwsgi: task %s ended while its app was answering: its result is dropped",
                task_id,
                extra=extra,
            )
        except StoreUnavailable as exc:
            # Raised by the spool as the body was written (a budget spent, a
            # full disk, a store down): the app's work is lost, the task ends.
            logger.error(
                "asyncwsgi: task %s: its result could not be stored: %s", task_id, exc, extra=extra
            )
            return None, store_full_result(_why(exc)), None
        # Broad on purpose: whatever the app raises ends its task as 500, not
        # the pool's thread (SystemExit, KeyboardInterrupt, GeneratorExit
        # included). In the main thread (a Celery worker's) those may be the
        # process being stopped: passed on once the task is ended.
        except BaseException as exc:
            logger.error(
                "asyncwsgi: task %s failed in the app: %s", task_id, type(exc).__name__,
                exc_info=True, extra=extra,
            )  # fmt: skip
            if (
                not isinstance(exc, Exception)
                and threading.current_thread() is threading.main_thread()
            ):
                return None, error_result(500), exc
        finally:
            if stream is not None:
                try:
                    stream.close()
                except (OSError, StoreUnavailable):
                    logger.exception("asyncwsgi: task %s: closing its request body failed", task_id)
        return None, error_result(500), None

    def _start_patience(self) -> float:
        return max(_START_PATIENCE, self.lease) if self.store.shared else _START_PATIENCE

    def _start(self, task_id: str) -> bool:
        delay = _RETRY_FIRST
        give_up = time.monotonic() + self._start_patience()
        while True:
            # An in-process store dies with the process: nothing to lease there.
            lease_until = time.time() + self.lease if self.store.shared else float("inf")
            try:
                return self.store.start(task_id, lease_until)
            except StoreUnavailable as exc:
                if time.monotonic() + delay > give_up:
                    raise
                if delay == _RETRY_FIRST:
                    logger.warning(
                        "asyncwsgi: task %s could not start (%s): retrying",
                        task_id,
                        exc,
                        extra=task_extra(task_id),
                    )
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_LAST)

    def deliver(self, task_id: str, result: Result, spool: Spool | None = None) -> None:
        """Store a task's final result, or keep it for a retry in the
        background (see :class:`~asyncwsgi.runner.finish.Finisher`)."""
        self.finisher.deliver(task_id, result, spool)

    @property
    def pending_results(self) -> int:
        """Finished results waiting for the store to take them."""
        return self.finisher.pending

    def drain(self, timeout: float | None) -> bool:
        """Wait until every pending result is stored, at most ``timeout``
        seconds. True if none is left."""
        return self.finisher.drain(timeout)

    def fail_running(self, message: str) -> None:
        """End every task this process still holds as a 500 (a shutdown that
        cannot wait for them); a result already waiting for the store is
        tried once more instead."""
        waiting = self.finisher.waiting()
        for task_id in self.held:
            result = waiting.get(task_id) or error_result(500, message)
            try:
                if self.store.finish(task_id, result):
                    finished(task_id, result)
            except StoreUnavailable as exc:
                logger.error(
                    "asyncwsgi: task %s could not be ended at shutdown (%s): its lease ends it",
                    task_id,
                    exc,
                    extra=task_extra(task_id),
                )

    def keep_clean(self) -> None:
        """Start (once) the janitor (:func:`~asyncwsgi.stores.upkeep.janitor`).
        Called when this process spools a body, so only processes that write
        files or chunks run one."""
        if not self._stop.is_set():
            self.janitor.start()

    def watch(self, task_id: str, within: float | None = None) -> None:
        """Start the clock of an accepted task (see :meth:`Leases.watch`)."""
        self.leases.watch(task_id, within)

    def sweep(self) -> None:
        """Start this process's sweeper of lapsed leases (see :meth:`Leases.sweep`)."""
        if not self._stop.is_set():
            self.leases.sweep()

    def cancel(self, task_id: str) -> None:
        """The task ended while it ran (past its timeout, deleted): its
        capture stops at the app's next chunk (see :class:`TaskEnded`)."""
        self.spools.cancel(task_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every background thread (heartbeat, watchdog, sweeper,
        janitor, result retries), and wait (up to ``timeout`` seconds each)
        for a call of theirs already under way: once this returns, none
        touches the store again, so it may be closed."""
        self._stop.set()
        self.leases.stop(timeout)
        self.janitor.stop(timeout)
        self.finisher.stop(timeout)
