"""Run tasks on RQ workers (Redis Queue) instead of threads of the web process.

>>> from redis import Redis
>>> from rq import Queue
>>> application = AsyncMiddleware(
...     app,
...     paths=["/reports/*"],
...     store="redis://localhost:6379/1",
...     executor=RQExecutor(Queue("reports", connection=Redis()), "proj.web:application"),
... )

The web processes answer 202 and the status URLs; ``rq worker reports``
runs the tasks (``-u redis://...`` naming the queue's Redis). Both sides
share the task store, which must be a shared store with a URL, so a task
behaves as it does on threads: progress, ``cancelled``, leases kept alive by
heartbeats (a work horse that dies leaves its task failing as 500 once the
lease passes) and ``max_result``.

The job calls :func:`run` with the application's import string and the
job's message (:meth:`asyncwsgi.job.Job.encode`, JSON-safe, whatever the
queue's serializer); its description names the task id only, so the request
is nowhere else in Redis.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import rq
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus

from .remote import RemoteExecutor
from .worker import load_app, run_message

if TYPE_CHECKING:
    from rq import Queue

    from ..job import Job

__all__ = ["RQExecutor", "Worker", "run"]

logger = logging.getLogger("asyncwsgi")

# What RQ calls: this module's run(), found by the worker by name.
_FUNC = f"{__name__}.run"
# Jobs RQ may still take out of the queue: a DELETE cancels these.
_WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


class RQExecutor(RemoteExecutor):
    """Put tasks on an RQ queue.

    ``queue`` is the :class:`rq.Queue` the workers consume (its connection,
    name and serializer are used as they are); ``app`` is the import string
    of the WSGI application the worker calls, which may name the
    :class:`~asyncwsgi.AsyncMiddleware` itself (the worker unwraps it). The
    job's id is the task's id.

    ``DELETE`` of a task still in the queue cancels its job (RQ's
    ``Job.cancel()``: out of the queue, into the canceled registry); of a
    running one, the app sees ``task.cancelled`` and its result is dropped.

    With the middleware's ``timeout`` set, the worker ends a task as ``504``
    when its time is up (counted from acceptance, whichever process accepted
    it), and the job's RQ timeout is ``timeout + kill_after`` seconds, after
    which RQ stops the work horse of an app that never returns. Without
    ``timeout`` the job has no RQ timeout (RQ's default of 180 seconds would
    end long tasks).
    """

    def __init__(self, queue: Queue, app: str, *, kill_after: float = 5.0) -> None:
        super().__init__(app)
        self.queue = queue
        self.kill_after = kill_after

    #: The queue's Redis unreachable, read-only (a replica after a failover)
    #: or full; not its other replies (a wrong type is a bug).
    unavailable = (
        *RemoteExecutor.unavailable,
        RedisConnectionError,
        RedisTimeoutError,
        ReadOnlyError,
        OutOfMemoryError,
    )

    def submit(self, job: Job) -> None:
        runner = self.bound_runner()
        # RQ counts whole seconds (SIGALRM); -1 is RQ's "no timeout".
        job_timeout = -1 if runner.timeout is None else math.ceil(runner.timeout + self.kill_after)
        self.queue.enqueue_call(
            _FUNC,
            args=(self.app, job.encode()),
            job_id=job.task_id,
            timeout=job_timeout,
            # The result lives in the task store: RQ keeps nothing once the job ran.
            result_ttl=0,
            # RQ drops a job that waited longer than this (queue_timeout).
            ttl=None if runner.queue_timeout is None else math.ceil(runner.queue_timeout),
            description=f"asyncwsgi task {job.task_id}",
        )

    def cancel(self, task_id: str) -> None:
        """Cancel the job if RQ has not started it; the worker skips it anyway
        if it does, as the task is gone from the store."""
        try:
            job = RQJob.fetch(
                task_id, connection=self.queue.connection, serializer=self.queue.serializer
            )
            if job.get_status() in _WAITING:
                job.cancel()
        except (NoSuchJobError, InvalidJobOperation):
            pass  # already gone, started or canceled
        except RedisError:
            # The queue's Redis: the worker that takes it skips it anyway.
            logger.exception(
                "asyncwsgi: could not cancel RQ job %s", task_id, extra={"task_id": task_id}
            )


def run(app: str, message: dict[str, Any]) -> None:
    """The job: run the task described by ``message`` against ``app``."""
    run_message(app, message)


class Worker(rq.Worker):
    """RQ's forking worker, which imports the WSGI application of asyncwsgi's
    jobs before it forks: ``rq worker -w asyncwsgi.executors.rq.Worker reports``.

    RQ's default worker forks a work horse per job, which then imports
    asyncwsgi and the application again, every time; here each horse
    inherits them (the application is imported once, at its first job). A
    job stays isolated in its horse, as with the default worker.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Import strings of the applications imported so far.
        self.preloaded: set[str] = set()

    def execute_job(self, job: Any, queue: Any) -> None:
        if job.func_name == _FUNC:
            self._preload(job)
        super().execute_job(job, queue)

    def _preload(self, job: Any) -> None:
        try:
            app = job.args[0]
            if app not in self.preloaded:
                self.preloaded.add(app)
                load_app(app)
        except Exception:
            # Importing runs the user's code, which may raise anything; the
            # horse imports it again, fails the same way and says so.
            logger.exception("asyncwsgi: could not import the app of job %s before forking", job.id)
