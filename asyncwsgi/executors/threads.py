"""The default executor: a bounded pool of threads in the web process."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from .base import Executor, ExecutorShutDown

if TYPE_CHECKING:
    from ..job import Job

__all__ = ["ThreadExecutor"]

logger = logging.getLogger("asyncwsgi")


class ThreadExecutor(Executor):
    """At most ``max_workers`` named daemon threads taking jobs from one queue.

    Threads start as work arrives, never more than ``max_workers``, and stay
    for the next job. A job that fails is logged; the thread goes on.
    """

    def __init__(self, max_workers: int = 8) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        # A C queue: a job handed to an idle thread costs one put() and the
        # thread's wake-up, with no Python-level condition in between.
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # The counts below are guarded by the lock itself (a C call on the
        # path of every job); the condition over it serves the shutdown only.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._queued = 0  # jobs put and not yet taken
        self._waiting = 0  # threads blocked on the queue
        self._unfinished = 0  # jobs put and not yet done
        self._stopping = False

    def queued_until(self, now: float) -> float | None:
        """Queued here, a task lives and dies with this process: with a
        shared store it gets a lease that this process's heartbeat renews
        (see :meth:`submit`), so that it ends as 503 once the process is
        gone; an in-process store dies with the process anyway."""
        runner = self.runner
        if runner is None or not runner.store.shared:
            return None
        return now + runner.lease

    def submit(self, job: Job) -> None:
        thread: threading.Thread | None = None
        runner = self.runner
        with self._lock:
            if self._stopping:
                raise ExecutorShutDown("executor is shut down")
            if runner is not None and runner.store.shared:
                runner.hold(job.task_id)
            # Put under the lock: a shutdown's stop marks must come after it.
            self._queue.put(job)
            self._queued += 1
            self._unfinished += 1
            if self._queued > self._waiting and len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._work,
                    name=f"asyncwsgi-worker-{len(self._threads) + 1}",
                    daemon=True,
                )
                self._threads.append(thread)
        if thread is not None:
            thread.start()

    @property
    def threads(self) -> int:
        return len(self._threads)

    @property
    def unfinished(self) -> int:
        with self._lock:
            return self._unfinished

    def _work(self) -> None:
        runner = self.runner
        assert runner is not None, "ThreadExecutor used before bind()"
        lock = self._lock
        get = self._queue.get
        with lock:
            self._waiting += 1
        while True:
            job = get()
            with lock:
                self._waiting -= 1
                if job is None:
                    return
                self._queued -= 1
            try:
                runner.run(job)
            except BaseException:
                # run() ends its task whatever happens; this thread must not
                # end with it, or the pool would shrink for good.
                logger.exception(
                    "asyncwsgi: task %s failed outside the app",
                    job.task_id,
                    extra={"task_id": job.task_id},
                )
            finally:
                # One lock round per job: the job is done and the thread
                # waits for the next one.
                with lock:
                    self._unfinished -= 1
                    self._waiting += 1
                    if self._stopping and not self._unfinished:
                        self._cond.notify_all()

    def shutdown(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if not self._stopping:
                self._stopping = True
                # After the jobs already queued: one stop mark per thread.
                for _ in self._threads:
                    self._queue.put(None)
            while self._unfinished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return True

    def abandon(self) -> list[Job]:
        jobs: list[Job] = []
        with self._cond:
            marks = 0
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    marks += 1
                else:
                    jobs.append(item)
            self._queued -= len(jobs)
            self._unfinished -= len(jobs)
            for _ in range(marks):
                self._queue.put(None)
        return jobs
