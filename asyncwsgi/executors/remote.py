"""Executors whose workers are other processes (Celery, RQ, Django Tasks).

The web process puts the job's message (:meth:`asyncwsgi.job.Job.encode`,
JSON-safe) on the engine's queue; a worker process opens the shared store
from its URL, imports the WSGI application and runs the task with the same
:class:`~asyncwsgi.runner.TaskRunner` as the thread pool
(:mod:`asyncwsgi.executors.worker`), so a task behaves the same on every
engine: progress, ``cancelled``, leases kept alive by heartbeats,
``max_result``, the byte budget and the ``timeout`` deadline. The engine
itself is told nothing else of the request.

Only the standard library and the core here: an engine's package is imported
by its own module (``asyncwsgi.executors.rq``, ...), never by this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Executor

if TYPE_CHECKING:
    from ..runner import TaskRunner

__all__ = ["RemoteExecutor"]


class RemoteExecutor(Executor):
    """Base of the executors that hand tasks to workers in other processes.

    ``app`` is the import string (``"module:attr"`` or ``"module.attr"``) of
    the WSGI application the worker calls; it may name the
    :class:`~asyncwsgi.AsyncMiddleware` itself, which the worker unwraps, so
    that a replayed request never becomes a task again. The middleware's
    store must be shared and have a URL (the worker opens it from that URL):
    a memory store is refused at bind time.
    """

    def __init__(self, app: str) -> None:
        if not isinstance(app, str) or not app:
            raise TypeError("app must be the import string of a WSGI application")
        self.app = app

    def bind(self, runner: TaskRunner) -> None:
        store = runner.store
        if not store.shared or store.url is None:
            name = type(self).__name__
            raise ValueError(
                f"{name} needs a shared store that workers can open from its URL "
                f"(store='redis://...' or 'sqlite:///...'), not {type(store).__name__}: "
                f"an in-process store is invisible to the workers"
            )
        super().bind(runner)

    def queued_until(self, now: float) -> float | None:
        """A task waits in the engine's queue at most ``queue_timeout``
        seconds: the deadline is in its record, so any process that reads it
        later ends it as 503 "not started in time" (nothing renews it), and
        in the message, so a worker that gets it later never runs it."""
        runner = self.bound_runner()
        return None if runner.queue_timeout is None else now + runner.queue_timeout

    def bound_runner(self) -> TaskRunner:
        if self.runner is None:
            raise RuntimeError(f"{type(self).__name__} used before bind()")
        return self.runner

    def shutdown(self, timeout: float | None = None) -> bool:
        """Returns True at once: tasks run in the engine's workers, not in
        this process, and go on after it stops."""
        return True
