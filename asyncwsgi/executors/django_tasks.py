"""Run tasks through Django's Tasks framework: whatever ``TASKS`` backend the
project configures (a database and ``db_worker``, RQ, Celery, ...) runs them.

>>> # proj/wsgi.py, after Django is set up
>>> application = AsyncMiddleware(
...     get_wsgi_application(),
...     paths=["/reports/*"],
...     store="sqlite:///tasks.db",
...     executor=DjangoTasksExecutor("proj.wsgi:application"),
... )

``django.tasks`` (Django 6.0 and later) is used when present, else the
``django-tasks`` backport. The task is ``asyncwsgi.executors.django_tasks.run``;
Django must be set up before this module is imported.

The task's arguments are the application's import string and the job's
message (:meth:`asyncwsgi.job.Job.encode`, JSON-safe, as every backend
requires).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from django.db import InterfaceError, OperationalError, close_old_connections

from .remote import RemoteExecutor
from .worker import run_message

if TYPE_CHECKING:
    from ..job import Job
    from ..runner import TaskRunner

if importlib.util.find_spec("django.tasks") is not None:  # Django 6.0+
    from django.tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_QUEUE_NAME,
        task,
        task_backends,
    )
else:
    from django_tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_QUEUE_NAME,
        task,
        task_backends,
    )

__all__ = ["DjangoTasksExecutor"]


def _run(app: str, message: dict[str, Any]) -> None:
    """The task: run the request described by ``message`` against ``app``."""
    run_message(app, message)


# The worker finds the task by this name: asyncwsgi.executors.django_tasks.run.
_run.__name__ = _run.__qualname__ = "run"


def __getattr__(name: str) -> Any:
    """``run``, the task, made on first use rather than at import: a task is
    checked against the project's ``TASKS`` when it is made, and a module
    level ``@task()`` would fail to import where the default backend has no
    queue named "default"."""
    if name != "run":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    backend = task_backends[DEFAULT_TASK_BACKEND_ALIAS]
    queues = sorted(backend.queues)
    queue_name = (
        DEFAULT_TASK_QUEUE_NAME if not queues or DEFAULT_TASK_QUEUE_NAME in queues else queues[0]
    )
    made = task(queue_name=queue_name)(_run)
    globals()["run"] = made
    return made


class DjangoTasksExecutor(RemoteExecutor):
    """Enqueue tasks with Django's Tasks framework.

    ``app`` is the import string of the WSGI application the worker calls
    (it may name the :class:`~asyncwsgi.AsyncMiddleware` itself: the worker
    unwraps it); ``backend`` and ``queue_name`` choose among the project's
    ``TASKS``.

    The framework has no way to cancel or to time-limit a task: ``DELETE``
    of a queued task leaves its job in the queue, and the worker that takes
    it finds the task gone and never calls the app; with the middleware's
    ``timeout``, the worker ends the task as ``504`` on time, but an app
    that never returns keeps its worker busy.

    The ``ImmediateBackend`` is refused: it would run every task inside the
    request that submits it.
    """

    def __init__(self, app: str, *, backend: str = "default", queue_name: str = "default") -> None:
        super().__init__(app)
        self.backend = backend
        self.queue_name = queue_name
        self._task: Any = None

    def bind(self, runner: TaskRunner) -> None:
        super().bind(runner)
        # Validated now, against the project's settings, not on the first task.
        self._task = __getattr__("run").using(backend=self.backend, queue_name=self.queue_name)
        if type(task_backends[self.backend]).__name__ == "ImmediateBackend":
            raise ValueError(
                f"the Tasks backend {self.backend!r} is the ImmediateBackend, which runs each "
                "task inside the request: configure a backend with workers in TASKS"
            )

    #: The backend's database unreachable or locked (not an integrity or
    #: programming error: those are bugs).
    unavailable = (*RemoteExecutor.unavailable, OperationalError, InterfaceError)

    def submit(self, job: Job) -> None:
        try:
            self._task.enqueue(self.app, job.encode())
        finally:
            # The middleware runs outside Django's request cycle, which would
            # otherwise close this thread's connection as CONN_MAX_AGE says.
            close_old_connections()
