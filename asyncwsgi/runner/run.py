"""Run one task: call the app with the task's environ and store what it answers.

The same runner serves the thread pool and remote workers (Celery), so a task
behaves the same wherever it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..capture import ResponseTooLarge, Spool, TaskEnded, capture
from ..environ import task_environ
from ..logs import current_task_id, task_extra
from ..metrics import INSTRUMENTS
from ..results import error_result, store_full_result, too_large_result
from ..stores.base import BodyRemoved, Store, StoreFull, StoreUnavailable
from ..stores.upkeep import janitor
from ..task import BodySink, Result, TaskHandle
from ..tracing import PARENT, end_run, inject, start_run
from .leases import Leases

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from ..task import Job

__all__ = ["TaskRunner"]

logger = logging.getLogger("asyncwsgi")

#: The job environ's key for when the task was accepted (``repr(time.time())``,
#: a string so that it crosses a JSON broker); the app never sees it.
ACCEPTED = "asyncwsgi.accepted"
#: The job environ's key for the path pattern that made the request a task
#: (its metrics' label, wherever it runs); the app never sees it either.
PATTERN = "asyncwsgi.pattern"

# A store call that failed is tried again after a delay that doubles from the
# first value up to the last: quick after a blip, one call every two seconds
# during a long outage.
_RETRY_FIRST = 0.05
_RETRY_LAST = 2.0
# How long a pool thread keeps trying to start a task while the store is
# unavailable: a store back within that (a restart) and the task runs; past
# it the task ends as 503 (never started, safe to submit again).
_START_PATIENCE = 5.0
_NOT_STARTED = "the task could not be started: the task store was unavailable"
_NOT_STORED = "the task's result could not be stored: the task store is full"
# A result's writer waiting for room in the byte budget looks again after a
# delay that doubles up to this; without a queue_timeout it waits this long.
_ROOM_POLL = 1.0
_ROOM_PATIENCE = 600.0


def _why(exc: StoreUnavailable) -> str:
    """What the client is told of a store fault: its kind, never the store's
    own message (which may name paths or hosts)."""
    if not isinstance(exc, StoreFull):
        return "the task store was unavailable"
    if "max_stored_bytes" in str(exc):
        return "the store's byte budget (max_stored_bytes) is spent"
    return "no space left in the task store"


class _Retry:
    """A finished result the store did not take yet."""

    __slots__ = ("result", "spool", "delay", "due", "since")

    def __init__(self, result: Result, spool: Spool | None = None) -> None:
        self.result = result
        self.spool = spool
        self.delay = _RETRY_FIRST
        self.since = time.monotonic()
        self.due = self.since + self.delay


class TaskRunner:
    """Runs jobs against ``app`` and writes results to ``store``.

    While tasks run, one heartbeat thread (only for shared stores, where
    another process may judge a lease) extends their leases every third of
    ``lease``. With a ``timeout``, one watchdog thread ends as 504 a task not
    done that long after it was accepted (see :meth:`watch`), queued or
    running; the app's thread cannot be stopped and finishes on its own, its
    late result dropped, and the pool never grows past its size.

    A result the store cannot take right now (an outage) is kept and retried
    by one background thread, with a growing delay, for as long as the
    process lives (and up to ``close()``'s timeout when it stops); the task
    stays held meanwhile, so its lease does not lapse. A result the store
    has no room for (:class:`~asyncwsgi.stores.base.StoreFull`) is replaced
    at once by a short 500 that names the cause. Every background thread
    logs a failed round and goes on.
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
        self._stop = threading.Event()
        # The spools of the tasks running here, by id: cancel() ends them.
        self._spools: dict[str, Spool] = {}
        self._lock = threading.Lock()
        self._retries: dict[str, _Retry] = {}
        self._retry_cond = threading.Condition(threading.Lock())
        self._retrier: threading.Thread | None = None

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
        task_id = job.task_id
        try:
            started = self._start(task_id)
        except Exception as exc:
            logger.error(
                "asyncwsgi: task %s could not start, the store was unavailable for %.0f s "
                "(%s): ending it as 503",
                task_id,
                _START_PATIENCE,
                exc,
                extra=task_extra(task_id),
            )
            self.deliver(task_id, error_result(503, _NOT_STARTED))
            return
        if not started:
            self._release(task_id)
            return  # deleted while queued: it never runs
        self.leases.hold(task_id)

        # The app's own log records name the task too (logs.TaskIdFilter).
        context = current_task_id.set(task_id)
        extra = task_extra(task_id)
        begun = time.time()
        accepted = _accepted(job.environ)
        span = start_run(job.environ, task_id, accepted, begun)
        counted = INSTRUMENTS.of(job.environ.get(PATTERN)) if INSTRUMENTS is not None else None
        if counted is not None and accepted is not None:
            counted.queue_wait.observe(max(0.0, begun - accepted))
        logger.debug("asyncwsgi: task %s started", task_id, extra=extra)
        result: Result | None = None
        stop: BaseException | None = None
        spool = Spool(
            self.spool_threshold,
            lambda: self._result_sink(task_id, self.max_result),
            limit=self.max_result,
        )
        stream = None
        failure = error_result(500)
        with self._lock:
            self._spools[task_id] = spool
        try:
            environ = task_environ(job.environ, job.body)
            # The app (or a middleware of its) may replace wsgi.input: close ours.
            stream = environ["wsgi.input"]
            # Travel with the job for its metrics and trace; not the request's.
            environ.pop(ACCEPTED, None)
            environ.pop(PATTERN, None)
            environ.pop(PARENT, None)
            environ["asyncwsgi.task"] = TaskHandle(task_id, self.store)
            if span is not None:
                inject(environ, span)  # the app's server span continues the trace
            result = capture(self.app, environ, spool=spool)
        except ResponseTooLarge as exc:
            logger.error("asyncwsgi: task %s failed: %s", task_id, exc, extra=extra)
            failure = too_large_result(self.max_result)
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
            failure = store_full_result(_why(exc))
        except Exception:
            logger.exception("asyncwsgi: task %s failed in the app", task_id, extra=extra)
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt, GeneratorExit from the app end
            # its task, not the pool's thread. In the main thread (a Celery
            # worker's) they may be the process being stopped: passed on
            # once the task is ended.
            logger.error(
                "asyncwsgi: task %s failed in the app: %s", task_id, type(exc).__name__,
                exc_info=True, extra=extra,
            )  # fmt: skip
            if threading.current_thread() is threading.main_thread():
                stop = exc
        with self._lock:
            self._spools.pop(task_id, None)
        if counted is not None:
            counted.run_time.observe(time.time() - begun)
        if stream is not None:
            try:
                stream.close()
            except Exception:
                logger.exception("asyncwsgi: task %s: closing its request body failed", task_id)
        try:
            if result is None:
                # What was spooled goes, and its bytes back to the budget,
                # before the error is stored.
                self._settle(task_id, spool, False)
                self.deliver(task_id, failure)
            else:
                self.deliver(task_id, result, spool)
        finally:
            if span is not None:
                end_run(span, None if result is None else result.status)
            current_task_id.reset(context)
        if stop is not None:
            raise stop

    def _result_sink(self, task_id: str, worst: int) -> BodySink:
        """Where a result too large for memory goes, with room for its worst
        case (``max_result``) reserved before the first byte is written: a
        task once accepted never finds the byte budget spent halfway.

        While the budget has no such room, the app's thread waits for it
        (results expire, tasks end and give back what they did not use);
        meanwhile new submissions are refused (``Store.want_room``), so the
        room goes to work already accepted. A store outage meanwhile only
        prolongs the wait. The wait ends when the task does (deleted, or past
        its timeout), or after ``queue_timeout``: then the result is not
        stored and the task ends as 500 with the reason.
        """
        deadline = time.monotonic() + (self.queue_timeout or _ROOM_PATIENCE)
        delay = _RETRY_FIRST
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
                    self._quietly(task_id, sink.discard)
                if time.monotonic() + delay > deadline or self._gone(task_id):
                    raise
            else:
                self.keep_clean()
                if waited:
                    # Else the mark lapses by itself a second after the last renewal.
                    self._quietly(task_id, self.store.want_room, 0)
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
            self._quietly(task_id, self.store.want_room, delay + 1.0)
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

    @staticmethod
    def _quietly(task_id: str, call: Callable[..., object], *args: object) -> None:
        """A store call whose failure (an outage) costs only a moment: the
        budget's mark lapses, a sweep removes a file, Redis reaps a ledger
        entry. Logged, not raised."""
        try:
            call(*args)
        except StoreUnavailable as exc:
            logger.warning("asyncwsgi: task %s: %s", task_id, exc, extra=task_extra(task_id))

    @staticmethod
    def finished(task_id: str, result: Result) -> None:
        """Count and log a task that ended with ``result`` (its store write
        succeeded: once per task, whichever process or thread ended it)."""
        if INSTRUMENTS is not None:
            INSTRUMENTS.finish(result)
        logger.debug(
            "asyncwsgi: task %s finished: %s", task_id, result.status, extra=task_extra(task_id)
        )

    def _start(self, task_id: str) -> bool:
        delay = _RETRY_FIRST
        give_up = time.monotonic() + _START_PATIENCE
        while True:
            # An in-process store dies with the process: nothing to lease there.
            lease_until = time.time() + self.lease if self.store.shared else float("inf")
            try:
                return self.store.start(task_id, lease_until)
            except Exception as exc:
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
        """Store a task's final result; if the store cannot take it now, keep
        it and retry in the background (the caller's thread is free at once).
        ``spool`` holds the result's spooled body: closed once the store took
        it, discarded if the store did not want it."""
        pending = self._store_result(task_id, result, spool)
        if pending is None:
            self._release(task_id)
            return
        with self._retry_cond:
            # A result already waiting for this task came first (the app's,
            # or the watchdog's 504): a finished result is never replaced.
            if task_id in self._retries:
                self._settle(task_id, spool, False)
            self._retries.setdefault(task_id, _Retry(pending, spool))
            if self._retrier is None:
                self._retrier = threading.Thread(
                    target=self._retry_loop, name="asyncwsgi-results", daemon=True
                )
                self._retrier.start()
            self._retry_cond.notify_all()

    def _store_result(
        self, task_id: str, result: Result, spool: Spool | None = None
    ) -> Result | None:
        """One attempt: None once the store took it (or the task is gone or
        already finished), else the result to try again."""
        try:
            taken = self.store.finish(task_id, result)
            self._settle(task_id, spool, taken)
            if taken:
                self.finished(task_id, result)
            return None
        except StoreFull as exc:
            if isinstance(result.body, bytes) and result.body.endswith(
                _NOT_STORED.encode() + b"\n"
            ):
                return result  # even the short error does not fit yet
            logger.error(
                "asyncwsgi: the result of task %s could not be stored (%s): ending it as 500",
                task_id,
                exc,
                extra=task_extra(task_id),
            )
            self._settle(task_id, spool, False)
            return self._store_result(task_id, error_result(500, _NOT_STORED))
        except Exception as exc:
            if task_id not in self._retries:
                logger.warning(
                    "asyncwsgi: could not store the result of task %s (%s): retrying",
                    task_id,
                    exc,
                    extra=task_extra(task_id),
                )
            return result

    def _retry_loop(self) -> None:
        cond = self._retry_cond
        while True:
            try:
                with cond:
                    if self._stop.is_set() and not self._retries:
                        return
                    now = time.monotonic()
                    due = [(k, r) for k, r in self._retries.items() if r.due <= now]
                    if not due:
                        if self._stop.is_set():
                            return
                        wake = min((r.due for r in self._retries.values()), default=now + 60)
                        cond.wait(wake - now)
                        continue
                for task_id, retry in due:
                    pending = self._store_result(task_id, retry.result, retry.spool)
                    with cond:
                        if pending is None:
                            del self._retries[task_id]
                            cond.notify_all()
                        else:
                            if pending is not retry.result:
                                retry.spool = None  # replaced by an error: settled
                            retry.result = pending
                            retry.delay = min(retry.delay * 2, _RETRY_LAST)
                            retry.due = time.monotonic() + retry.delay
                    if pending is None:
                        self._release(task_id)
                        logger.warning(
                            "asyncwsgi: stored the result of task %s after %.1f s of retries",
                            task_id,
                            time.monotonic() - retry.since,
                            extra=task_extra(task_id),
                        )
            except Exception:
                logger.exception("asyncwsgi: retrying results failed; going on")
                time.sleep(_RETRY_LAST)

    @property
    def pending_results(self) -> int:
        """Finished results waiting for the store to take them."""
        with self._retry_cond:
            return len(self._retries)

    def drain(self, timeout: float | None) -> bool:
        """Wait until every pending result is stored, at most ``timeout``
        seconds. True if none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._retry_cond:
            while self._retries:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._retry_cond.wait(remaining)
        return True

    def _settle(self, task_id: str, spool: Spool | None, taken: bool) -> None:
        """The store took the spooled body (its writer lets go) or will never
        have it (it is removed). Never raises: the task ends regardless."""
        if spool is None:
            return
        try:
            if taken:
                spool.close()
            else:
                spool.discard()
        except Exception:
            logger.exception("asyncwsgi: task %s: releasing its spooled body failed", task_id)

    def _release(self, task_id: str) -> None:
        self.leases.release(task_id)

    def fail_running(self, message: str) -> None:
        """End every task this process still holds as a 500 (a shutdown that
        cannot wait for them); a result already waiting for the store is
        tried once more instead."""
        with self._retry_cond:
            waiting = dict(self._retries)
        for task_id in self.held:
            retry = waiting.get(task_id)
            result = retry.result if retry is not None else error_result(500, message)
            try:
                if self.store.finish(task_id, result):
                    self.finished(task_id, result)
            except Exception as exc:
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
        with self._lock:
            spool = self._spools.get(task_id)
        if spool is not None:
            spool.ended = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the heartbeat and the watchdog, and wait (up to ``timeout``
        seconds) for a call of theirs already under way: once this returns,
        neither touches the store again, so it may be closed."""
        self._stop.set()
        self.leases.stop(timeout)
        self.janitor.stop(timeout)
        with self._retry_cond:
            if self._retries:
                logger.error(
                    "asyncwsgi: stopping with %d results the store never took: %s",
                    len(self._retries),
                    ", ".join(self._retries),
                )
                self._retries.clear()
            self._retry_cond.notify_all()
        current = threading.current_thread()
        if self._retrier is not None and self._retrier is not current:
            self._retrier.join(timeout)


def _accepted(environ: dict[str, object]) -> float | None:
    """When the task was accepted, as the middleware noted it in its environ."""
    value = environ.get(ACCEPTED)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None
