"""Run tasks on Celery workers instead of threads of the web process.

>>> celery_app = Celery("proj", broker="redis://localhost:6379/0")
>>> application = AsyncMiddleware(
...     app,
...     paths=["/reports/*"],
...     store="redis://localhost:6379/1",
...     executor=CeleryExecutor(celery_app, "proj.web:app"),
... )

The web processes answer 202 and the status URLs; ``celery -A
proj.web:celery_app worker`` runs the tasks. Both sides share the task store
(it must be a shared store with a URL, such as Redis), so a task behaves as it
does on threads: progress, ``cancelled``, leases kept alive by heartbeats (a
worker that dies leaves its task failing as 500 once the lease passes) and
``max_result``.

What crosses the broker is JSON (never pickle): the task's one argument is
the job's message (:meth:`asyncwsgi.job.Job.encode`): the JSON-safe part of
the environ, the body in base64 (or, above ``spool_threshold``, only its
size and digest: the body itself waits in the store), the store's URL and
the web side's limits, its byte budget included. Objects an outer
middleware put in the environ stay behind.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kombu.exceptions import KombuError

from .remote import RemoteExecutor
from .worker import run_message

if TYPE_CHECKING:
    from ..job import Job

__all__ = ["TASK_NAME", "CeleryExecutor"]

logger = logging.getLogger("asyncwsgi")

TASK_NAME = "asyncwsgi.run"
# Where a Celery app keeps its "asyncwsgi.run" task and the WSGI app that task
# runs: on the Celery app itself, so that nothing outlives it here.
_ON_APP = "_asyncwsgi_task"
_registered_lock = threading.Lock()


class CeleryExecutor(RemoteExecutor):
    """Send tasks to Celery workers.

    ``celery_app`` is the :class:`celery.Celery` application the workers run
    (``celery -A module:celery_app worker``); constructing the executor
    registers the task ``asyncwsgi.run`` on it. ``app`` is the import string
    (``"module:attr"`` or ``"module.attr"``) of the WSGI application the
    worker calls; it may name the :class:`~asyncwsgi.AsyncMiddleware` itself,
    which the worker unwraps, so that a replayed request never becomes a task
    again. ``queue`` routes the tasks to a named Celery queue (start the
    worker with ``-Q <queue>``).

    With the middleware's ``timeout`` set, the worker too ends a task as
    ``504`` when its time is up (counted from acceptance), whichever process
    accepted it and whether or not that process still runs; and Celery's hard
    ``time_limit`` of ``timeout + kill_after`` seconds stops the worker
    process of an app that never returns, so its slot is not lost for good.

    The middleware's store must be shared and have a URL (``redis://...``):
    the worker opens it from that URL. A memory store is refused at bind time.
    """

    def __init__(
        self, celery_app: Any, app: str, *, queue: str | None = None, kill_after: float = 5.0
    ) -> None:
        super().__init__(app)
        self.celery_app = celery_app
        self.queue = queue
        self.kill_after = kill_after
        self._task = _register(celery_app, app)
        # The broker's own errors (its transport's, such as redis-py's), and
        # kombu's: a message that cannot be sent for them is a 503. (A
        # connection object only: nothing is opened to learn them.)
        connection = celery_app.connection_for_write()
        try:
            self.unavailable = (
                *RemoteExecutor.unavailable,
                KombuError,
                OSError,
                *connection.connection_errors,
                *connection.channel_errors,
            )
        finally:
            connection.release()

    def submit(self, job: Job) -> None:
        runner = self.bound_runner()
        options: dict[str, Any] = {
            "task_id": job.task_id,
            "serializer": "json",
            # Celery would otherwise copy a repr of the whole job (the
            # environ, credentials included) into the headers that monitors
            # and logs show, formatting it again on every submission: about
            # a quarter of a submission's CPU. The headers name the request.
            "argsrepr": _argsrepr(job),
            "kwargsrepr": "{}",
        }
        if self.queue is not None:
            options["queue"] = self.queue
        if runner.timeout is not None:
            # Celery's hard limit frees the worker's slot from an app that
            # never returns (prefork pool: the child is replaced); the task
            # itself ends as 504 at its deadline, in the message.
            options["time_limit"] = runner.timeout + self.kill_after
        if job.queued_until is not None:
            # A worker that gets it later discards it unrun (Celery's expiry).
            options["expires"] = datetime.fromtimestamp(job.queued_until, timezone.utc)
        # One argument, the job's message: keyword-free and order-free.
        self._task.apply_async(args=(job.encode(),), **options)

    def cancel(self, task_id: str) -> None:
        """Revoke the queued task; a worker that gets it anyway skips it, as
        the task is gone from the store."""
        connection = self.celery_app.connection_for_write()
        try:
            self.celery_app.control.revoke(task_id, connection=connection)
        except self.unavailable:
            # A revoke that cannot be sent leaves the worker to skip the task.
            logger.exception(
                "asyncwsgi: could not revoke Celery task %s", task_id, extra={"task_id": task_id}
            )
        finally:
            connection.release()


def _argsrepr(job: Job) -> str:
    environ = job.environ
    method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
    return f"(<asyncwsgi job {method} {path[:200]}>,)"


def _register(celery_app: Any, app: str) -> Any:
    with _registered_lock:
        known: tuple[str, Any] | None = getattr(celery_app, _ON_APP, None)
        if known is not None:
            if known[0] != app:
                raise ValueError(
                    f"{TASK_NAME} on this Celery app already runs {known[0]!r}, not {app!r}: "
                    "use one Celery app per WSGI application"
                )
            return known[1]

        def run(message: dict[str, Any]) -> None:
            run_message(app, message)

        task = celery_app.task(name=TASK_NAME, serializer="json", ignore_result=True, shared=False)(
            run
        )
        setattr(celery_app, _ON_APP, (app, task))
        return task
