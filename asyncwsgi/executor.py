"""Where tasks run: the executor interface and the default bounded thread pool."""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import TaskRunner

__all__ = ["Executor", "Job", "ThreadExecutor"]

logger = logging.getLogger("asyncwsgi")


@dataclass(slots=True)
class Job:
    """A task to run: its id, the environ snapshot and the request body."""

    task_id: str
    environ: dict[str, Any]
    body: bytes


class Executor(abc.ABC):
    """Runs jobs with the runner it is bound to.

    The middleware binds it once (:meth:`bind`), submits each accepted task
    (:meth:`submit` never refuses: limits are checked before a task is
    accepted), and shuts it down on ``close()``.
    """

    runner: TaskRunner | None = None
    #: Whether queued jobs wait in this process (so its heartbeat must keep
    #: them alive, and they die with it) rather than in a broker.
    queues_locally: bool = False

    def bind(self, runner: TaskRunner) -> None:
        self.runner = runner

    @abc.abstractmethod
    def submit(self, job: Job) -> None: ...

    def cancel(self, task_id: str) -> None:  # noqa: B027 (optional hook)
        """A queued task was deleted. The runner skips deleted tasks anyway;
        an executor may also drop it from its queue."""

    @abc.abstractmethod
    def shutdown(self, timeout: float | None = None) -> bool:
        """Run what was submitted, then stop. True if all of it ended in time."""

    def abandon(self) -> list[Job]:
        """After a shutdown that timed out: take back the jobs never started,
        so that the caller can end them explicitly."""
        return []


class ThreadExecutor(Executor):
    """At most ``max_workers`` named daemon threads taking jobs from one queue.

    Threads start as work arrives, never more than ``max_workers``, and stay
    for the next job. A job that fails is logged; the thread goes on.
    """

    queues_locally = True

    def __init__(self, max_workers: int = 8) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._busy = 0
        self._stopping = False

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("executor is shut down")
            self._queue.append(job)
            if self._idle == 0 and len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._work,
                    name=f"asyncwsgi-worker-{len(self._threads) + 1}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._cond.notify()

    @property
    def threads(self) -> int:
        return len(self._threads)

    def _work(self) -> None:
        runner = self.runner
        assert runner is not None, "ThreadExecutor used before bind()"
        cond = self._cond
        while True:
            with cond:
                self._idle += 1
                while not self._queue and not self._stopping:
                    cond.wait()
                self._idle -= 1
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._busy += 1
            try:
                runner.run(job)
            except Exception:
                logger.exception("asyncwsgi: task %s failed outside the app", job.task_id)
            finally:
                with cond:
                    self._busy -= 1
                    if self._stopping:
                        # only shutdown() waits for the pool to drain; waking
                        # every idle worker after each job costs throughput
                        cond.notify_all()

    def shutdown(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            while self._queue or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return True

    def abandon(self) -> list[Job]:
        with self._cond:
            jobs = list(self._queue)
            self._queue.clear()
            return jobs
