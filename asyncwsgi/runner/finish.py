"""Storing a task's final result: at once, or retried until the store takes it.

A result the store cannot take right now (an outage: ``StoreUnavailable``) is
kept and retried by one background thread, with a growing delay, for as long
as the process lives (and up to ``close()``'s timeout when it stops); the
task stays held meanwhile, so its lease does not lapse. A result the store
has no room for (``StoreFull``) is replaced at once by a short 500 that names
the cause. Anything else a store raises is a bug: logged with its traceback,
and the task ended as a plain 500 if the store takes that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .. import metrics
from ..capture import Spool
from ..logs import task_extra
from ..results import error_result
from ..stores.base import Store, StoreFull, StoreUnavailable
from ..task import Result

__all__ = ["Finisher", "finished", "settle"]

logger = logging.getLogger("asyncwsgi")

# A result the store did not take is tried again after a delay that doubles
# from the first value up to the last: quick after a blip, one call every two
# seconds during a long outage.
_RETRY_FIRST = 0.05
_RETRY_LAST = 2.0
_NOT_STORED = "the task's result could not be stored: the task store is full"
_BUG = "the task's result could not be stored"


def finished(task_id: str, result: Result) -> None:
    """Count and log a task that ended with ``result`` (its store write
    succeeded: once per task, whichever process or thread ended it)."""
    if metrics.INSTRUMENTS is not None:
        metrics.INSTRUMENTS.finish(result)
    if logger.isEnabledFor(logging.DEBUG):  # its record's extra built only then
        logger.debug(
            "asyncwsgi: task %s finished: %s", task_id, result.status, extra=task_extra(task_id)
        )


def settle(task_id: str, spool: Spool | None, taken: bool) -> None:
    """The store took the spooled body (its writer lets go) or will never
    have it (it is removed, its bytes back to the budget). A store that
    cannot remove it now leaves it to expiry: the task ends regardless."""
    if spool is None:
        return
    try:
        if taken:
            spool.close()
        else:
            spool.discard()
    except (StoreUnavailable, OSError) as exc:
        logger.warning(
            "asyncwsgi: task %s: releasing its spooled body failed (%s): left to expiry",
            task_id,
            exc,
            extra=task_extra(task_id),
        )


class _Retry:
    """A finished result the store did not take yet."""

    __slots__ = ("result", "spool", "delay", "due", "since")

    def __init__(self, result: Result, spool: Spool | None = None) -> None:
        self.result = result
        self.spool = spool
        self.delay = _RETRY_FIRST
        self.since = time.monotonic()
        self.due = self.since + self.delay


class Finisher:
    """Stores final results in ``store``; ``release(task_id)`` is called once a
    task's result is stored (or it needs none any more)."""

    def __init__(self, store: Store, release: Callable[[str], None]) -> None:
        self.store = store
        self._release = release
        self._retries: dict[str, _Retry] = {}
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stopped = False

    def deliver(self, task_id: str, result: Result, spool: Spool | None = None) -> None:
        """Store a task's final result; if the store cannot take it now, keep
        it and retry in the background (the caller's thread is free at once).
        ``spool`` holds the result's spooled body: closed once the store took
        it, discarded if the store did not want it."""
        pending = self._store(task_id, result, spool)
        if pending is None:
            self._release(task_id)
            return
        with self._cond:
            # A result already waiting for this task came first (the app's,
            # or the watchdog's 504): a finished result is never replaced.
            if task_id in self._retries:
                settle(task_id, spool, False)
            self._retries.setdefault(task_id, _Retry(pending, spool))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="asyncwsgi-results", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _store(self, task_id: str, result: Result, spool: Spool | None = None) -> Result | None:
        """One attempt: None once the store took it (or the task is gone or
        already finished, or a bug left nothing to retry), else the result to
        try again."""
        try:
            taken = self.store.finish(task_id, result)
            settle(task_id, spool, taken)
            if taken:
                finished(task_id, result)
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
            settle(task_id, spool, False)
            return self._store(task_id, error_result(500, _NOT_STORED))
        except StoreUnavailable as exc:
            if task_id not in self._retries:
                logger.warning(
                    "asyncwsgi: could not store the result of task %s (%s): retrying",
                    task_id,
                    exc,
                    extra=task_extra(task_id),
                )
            return result
        # Broad on purpose: not a store fault but a bug, never retried (this
        # also keeps the retry thread alive). The task ends as a plain 500 if
        # the store takes that, else by its lease once released.
        except Exception:
            logger.exception(
                "asyncwsgi: storing the result of task %s failed",
                task_id,
                extra=task_extra(task_id),
            )
            settle(task_id, spool, False)
            if isinstance(result.body, bytes) and result.body.endswith(_BUG.encode() + b"\n"):
                return None
            return self._store(task_id, error_result(500, _BUG))

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                if self._stopped and not self._retries:
                    return
                now = time.monotonic()
                due = [(k, r) for k, r in self._retries.items() if r.due <= now]
                if not due:
                    if self._stopped:
                        return
                    wake = min((r.due for r in self._retries.values()), default=now + 60)
                    cond.wait(wake - now)
                    continue
            for task_id, retry in due:
                self._again(task_id, retry)  # never raises: see _store

    def _again(self, task_id: str, retry: _Retry) -> None:
        pending = self._store(task_id, retry.result, retry.spool)
        with self._cond:
            if pending is None:
                self._retries.pop(task_id, None)
                self._cond.notify_all()
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

    @property
    def pending(self) -> int:
        """Finished results waiting for the store to take them."""
        with self._cond:
            return len(self._retries)

    def waiting(self) -> dict[str, Result]:
        """The results waiting for the store, by task."""
        with self._cond:
            return {task_id: retry.result for task_id, retry in self._retries.items()}

    def drain(self, timeout: float | None) -> bool:
        """Wait until every pending result is stored, at most ``timeout``
        seconds. True if none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._retries:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Give up the results still waiting (logged), and wait for an attempt
        under way, at most ``timeout`` seconds."""
        with self._cond:
            self._stopped = True
            if self._retries:
                logger.error(
                    "asyncwsgi: stopping with %d results the store never took: %s",
                    len(self._retries),
                    ", ".join(self._retries),
                )
                self._retries.clear()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
