"""The executor interface: where the middleware hands each accepted task."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..job import Job
    from ..runner import TaskRunner

__all__ = ["Executor", "ExecutorShutDown"]


class ExecutorShutDown(RuntimeError):
    """A job submitted after the executor was shut down (a ``close()``
    racing with a request): the queue is closed, not broken."""


class Executor(abc.ABC):
    """Runs jobs with the runner it is bound to.

    The middleware binds it once (:meth:`bind`), submits each accepted task
    (:meth:`submit` never refuses: limits are checked before a task is
    accepted), and shuts it down on ``close()``.
    """

    runner: TaskRunner | None = None

    #: What :meth:`submit` raises when the queue cannot take a task now (a
    #: broker down, a database unreachable, the executor shut down): the
    #: request is answered 503 with ``Retry-After``. Anything else it raises
    #: is a bug, answered 500 and logged with its traceback. An executor
    #: adds its backend's errors here.
    unavailable: tuple[type[BaseException], ...] = (ExecutorShutDown,)

    def bind(self, runner: TaskRunner) -> None:
        self.runner = runner

    @property
    def unfinished(self) -> int:
        """Tasks submitted to this process and not done yet (queued here or
        running here); 0 for an executor whose tasks run elsewhere."""
        return 0

    def queued_until(self, now: float) -> float | None:
        """The lease of a task accepted at ``now``, until it starts: past it,
        whichever process reads the task first ends it as ``503`` "not
        started in time" (the store's lease rule). Where the queue lives
        decides: None (the default) is no limit."""
        return None

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
