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

What crosses the broker is JSON (never pickle): the task id, the store URL,
the JSON-safe part of the environ (its ``str`` values, ``wsgi.url_scheme`` and
``wsgi.multiprocess``), the body in base64, ``max_result``, ``lease`` and
the ``timeout`` deadline.
Objects an outer middleware put in the environ stay behind.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from werkzeug.utils import import_string

from ..executor import Executor
from ..runner import TaskRunner
from ..stores import Store, open_store
from ..task import Job

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["TASK_NAME", "CeleryExecutor"]

logger = logging.getLogger("asyncwsgi")

TASK_NAME = "asyncwsgi.run"

# The "asyncwsgi.run" task of each Celery app, and the WSGI app it runs.
_registered: weakref.WeakKeyDictionary[Any, tuple[str, Any]] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()


class CeleryExecutor(Executor):
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
        if not isinstance(app, str) or not app:
            raise TypeError("app must be the import string of a WSGI application")
        self.celery_app = celery_app
        self.app = app
        self.queue = queue
        self.kill_after = kill_after
        self._task = _register(celery_app, app)

    def bind(self, runner: TaskRunner) -> None:
        store = runner.store
        if not store.shared or store.url is None:
            raise ValueError(
                "CeleryExecutor needs a shared store that workers can open from its URL "
                f"(store='redis://...'), not {type(store).__name__}: an in-process store "
                "is invisible to Celery workers"
            )
        super().bind(runner)

    def submit(self, job: Job) -> None:
        runner = self.runner
        if runner is None:
            raise RuntimeError("CeleryExecutor used before bind()")
        options: dict[str, Any] = {"task_id": job.task_id, "serializer": "json"}
        if self.queue is not None:
            options["queue"] = self.queue
        deadline = None
        if runner.timeout is not None:
            # The worker ends the task as 504 at the same moment this process
            # would, so the timeout holds even when this process is gone; and
            # Celery's hard limit frees the worker's slot from an app that
            # never returns (prefork pool: the child is replaced).
            deadline = time.time() + runner.timeout
            options["time_limit"] = runner.timeout + self.kill_after
        self._task.apply_async(
            args=(
                job.task_id,
                runner.store.url,
                json_environ(job.environ),
                base64.b64encode(job.body).decode("ascii"),
                runner.max_result,
                runner.lease,
                deadline,
            ),
            **options,
        )

    def cancel(self, task_id: str) -> None:
        """Revoke the queued task; a worker that gets it anyway skips it, as
        the task is gone from the store."""
        try:
            self.celery_app.control.revoke(task_id)
        except Exception:
            logger.exception("asyncwsgi: could not revoke Celery task %s", task_id)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Returns True at once: tasks run in the Celery workers, not in this
        process, and go on after it stops. Stop the workers with Celery's
        own warm shutdown."""
        return True


def json_environ(environ: dict[str, Any]) -> dict[str, Any]:
    """The part of an environ snapshot that can cross a JSON broker."""
    sent: dict[str, Any] = {
        key: value for key, value in environ.items() if type(value) is str and type(key) is str
    }
    multiprocess = environ.get("wsgi.multiprocess")
    if isinstance(multiprocess, bool):
        sent["wsgi.multiprocess"] = multiprocess
    return sent


def _register(celery_app: Any, app: str) -> Any:
    with _registered_lock:
        known = _registered.get(celery_app)
        if known is not None:
            if known[0] != app:
                raise ValueError(
                    f"{TASK_NAME} on this Celery app already runs {known[0]!r}, not {app!r}: "
                    "use one Celery app per WSGI application"
                )
            return known[1]

        def run(
            task_id: str,
            store_url: str,
            environ: dict[str, Any],
            body: str,
            max_result: int,
            lease: float,
            deadline: float | None = None,  # absent from messages of 0.1.0
        ) -> None:
            runner = _worker_runner(app, store_url, max_result, lease)
            if deadline is not None:
                runner.watch(task_id, within=deadline - time.time())
            runner.run(Job(task_id, environ, base64.b64decode(body)))

        task = celery_app.task(name=TASK_NAME, serializer="json", ignore_result=True, shared=False)(
            run
        )
        _registered[celery_app] = (app, task)
        return task


# -- the worker side -----------------------------------------------------

_cache_lock = threading.Lock()
_cache_pid: int | None = None
_apps: dict[str, WSGIApplication] = {}
_stores: dict[str, Store] = {}
_runners: dict[tuple[str, str, int, float], TaskRunner] = {}


def load_app(import_name: str) -> WSGIApplication:
    """The WSGI application ``import_name`` names, unwrapped of any
    :class:`~asyncwsgi.AsyncMiddleware` around it."""
    from ..middleware import AsyncMiddleware

    app: Any = import_string(import_name)
    while isinstance(app, AsyncMiddleware):
        app = app.app
    if not callable(app):
        raise TypeError(f"{import_name!r} is not a WSGI application")
    result: WSGIApplication = app
    return result


def _worker_runner(app: str, store_url: str, max_result: int, lease: float) -> TaskRunner:
    """One runner per process (and per app, store, limits): the app is
    imported and the store opened once, after the worker forked."""
    global _cache_pid
    key = (app, store_url, max_result, lease)
    with _cache_lock:
        pid = os.getpid()
        if _cache_pid != pid:
            # Forked from a process that had its own: start afresh.
            _cache_pid = pid
            _apps.clear()
            _stores.clear()
            _runners.clear()
        runner = _runners.get(key)
        if runner is None:
            wsgi_app = _apps.get(app)
            if wsgi_app is None:
                wsgi_app = _apps[app] = load_app(app)
            store = _stores.get(store_url)
            if store is None:
                store = _stores[store_url] = open_store(store_url)
            runner = _runners[key] = TaskRunner(wsgi_app, store, max_result=max_result, lease=lease)
        return runner
