"""Executors whose workers are other processes (Celery, RQ, Django Tasks).

The web process puts a JSON-safe message on the engine's queue; a worker
process opens the shared store from its URL, imports the WSGI application
and runs the task with the same :class:`~asyncwsgi.runner.TaskRunner` as the
thread pool, so a task behaves the same on every engine: progress,
``cancelled``, leases kept alive by heartbeats, ``max_result`` and the
``timeout`` deadline.

What the message holds (:func:`job_message`): the task id, the store URL, the
JSON-safe part of the environ (:func:`~asyncwsgi.environ.json_environ`), the
body in base64 when it is small (up to ``spool_threshold``), ``max_result``,
the store's ``max_stored_bytes`` (which the worker's store, opened from the
URL, takes on), ``lease``, ``spool_threshold``, the ``timeout`` deadline and the
``queue_timeout`` one. The engine itself is told nothing else of the request.
A larger request body never enters the engine's queue: it was spooled into
the store before the 202 (chunks in Redis, a file beside an SQLite
database), the message carries only its size and SHA-256, and the worker
reads it from the store as the app consumes ``wsgi.input``.

Only the standard library and the core here: an engine's package is imported
by its own module (``asyncwsgi.contrib.rq``, ...), never by this one.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from werkzeug.utils import import_string

from .environ import json_environ
from .executor import Executor
from .results import error_result, lost_result
from .runner import TaskRunner
from .stores import Store, open_store
from .task import Body, Job

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["RemoteExecutor", "job_message", "load_app", "run_message", "worker_runner"]

logger = logging.getLogger("asyncwsgi")


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


def job_message(runner: TaskRunner, job: Job) -> dict[str, Any]:
    """What a worker needs to run ``job`` (JSON-safe), and nothing more.

    With the middleware's ``timeout`` set, ``deadline`` is when the worker
    ends the task as 504: the same moment the accepting process would, so
    that the timeout holds even when that process is gone.
    """
    body: str | dict[str, Any]
    if isinstance(job.body, bytes):
        body = base64.b64encode(job.body).decode("ascii")
    else:
        body = {"size": job.body.size, "sha256": job.body.sha256}
    return {
        "id": job.task_id,
        "store": runner.store.url,
        "environ": json_environ(job.environ),
        "body": body,
        "max_result": runner.max_result,
        # The worker's store, opened from the URL, learns the budget here:
        # its result writers reserve from the same one as the web side's.
        "max_stored_bytes": runner.store.max_stored_bytes,
        "lease": runner.lease,
        "deadline": None if runner.timeout is None else time.time() + runner.timeout,
        "queued_until": (
            None if runner.queue_timeout is None else time.time() + runner.queue_timeout
        ),
        "spool_threshold": runner.spool_threshold,
    }


def run_message(app: str, message: dict[str, Any]) -> None:
    """The worker side of :func:`job_message`: run the task against ``app``
    (an import string), with this process's runner for that app and store."""
    try:
        runner = worker_runner(
            app,
            message["store"],
            message["max_result"],
            message["lease"],
            message.get("spool_threshold") or 2**20,
        )
        if message.get("max_stored_bytes") is not None:
            runner.store.max_stored_bytes = message["max_stored_bytes"]
    except Exception:
        # Left queued, the task would wait for its queue_timeout: end it now.
        logger.exception("asyncwsgi: could not load %s for task %s", app, message["id"])
        _store(message["store"]).finish(
            message["id"], error_result(500, "the worker could not load the application")
        )
        return
    queued_until = message.get("queued_until")  # absent from older messages
    if queued_until is not None and time.time() > queued_until:
        # The record says the same to every reader: this one ends it now.
        logger.error("asyncwsgi: task %s was not started in time: not run", message["id"])
        runner.deliver(message["id"], lost_result("queued"))
        return
    deadline = message.get("deadline")
    if deadline is not None:
        runner.watch(message["id"], within=deadline - time.time())
    sent = message["body"]
    if isinstance(sent, str):
        body: bytes | Body = base64.b64decode(sent)
    else:
        body = runner.store.request_body(message["id"], int(sent["size"]), str(sent["sha256"]))
    runner.run(Job(message["id"], message["environ"], body))


def load_app(import_name: str) -> WSGIApplication:
    """The WSGI application ``import_name`` names, unwrapped of any
    :class:`~asyncwsgi.AsyncMiddleware` around it."""
    from .middleware import AsyncMiddleware

    app: Any = import_string(import_name)
    while isinstance(app, AsyncMiddleware):
        app = app.app
    if not callable(app):
        raise TypeError(f"{import_name!r} is not a WSGI application")
    result: WSGIApplication = app
    return result


_cache_lock = threading.RLock()  # _store() is called under it too
_cache_pid: int | None = None
_apps: dict[str, WSGIApplication] = {}
_stores: dict[str, Store] = {}
_runners: dict[tuple[str, str, int, float, int], TaskRunner] = {}


def _forget_if_forked() -> None:
    """Called with ``_cache_lock`` held."""
    global _cache_pid
    pid = os.getpid()
    if _cache_pid != pid:
        # Forked from a process that had its own: start afresh.
        _cache_pid = pid
        _apps.clear()
        _stores.clear()
        _runners.clear()


def _store(url: str) -> Store:
    """This process's store opened from ``url``."""
    with _cache_lock:
        _forget_if_forked()
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = open_store(url)
        return store


def worker_runner(
    app: str, store_url: str, max_result: int, lease: float, spool_threshold: int = 2**20
) -> TaskRunner:
    """One runner per process (and per app, store, limits): the app is
    imported and the store opened once, after the worker forked."""
    key = (app, store_url, max_result, lease, spool_threshold)
    with _cache_lock:
        _forget_if_forked()
        runner = _runners.get(key)
        if runner is None:
            wsgi_app = _apps.get(app)
            if wsgi_app is None:
                wsgi_app = _apps[app] = load_app(app)
            store = _store(store_url)
            runner = _runners[key] = TaskRunner(
                wsgi_app,
                store,
                max_result=max_result,
                lease=lease,
                spool_threshold=spool_threshold,
            )
        return runner
