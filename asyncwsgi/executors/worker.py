"""The worker side of the remote executors: a process of Celery, RQ or Django
Tasks turns a job message into a run, with its own runner for the app and
store the message names."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from werkzeug.utils import import_string

from ..job import BadJobMessage, Job
from ..results import error_result, lost_result
from ..runner import TaskRunner
from ..stores import Store, open_store

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["load_app", "run_message", "worker_runner"]

logger = logging.getLogger("asyncwsgi")


def run_message(app: str, message: object) -> None:
    """Run the job of ``message`` (:meth:`Job.encode`'s) against ``app`` (an
    import string), with this process's runner for that app and store."""
    try:
        job = Job.decode(message, _store)
    except BadJobMessage as exc:
        _refuse(message, exc)
        return
    url = job.store
    assert url is not None, "decode() reads the store's URL"
    try:
        runner = worker_runner(app, url, job)
    except Exception:
        # Importing the app runs the user's code: whatever it raises, the
        # task, left queued, would wait for its queue_timeout: end it now.
        logger.exception("asyncwsgi: could not load %s for task %s", app, job.task_id)
        _store(url, job.max_stored_bytes).finish(
            job.task_id, error_result(500, "the worker could not load the application")
        )
        return
    if job.queued_until is not None and time.time() > job.queued_until:
        # The record says the same to every reader: this one ends it now.
        logger.error("asyncwsgi: task %s was not started in time: not run", job.task_id)
        runner.deliver(job.task_id, lost_result("queued"))
        return
    if job.deadline is not None:
        runner.watch(job.task_id, within=job.deadline - time.time())
    runner.run(job)


def _refuse(message: object, exc: BadJobMessage) -> None:
    """A message this worker cannot read ends its task as 500 when it names
    one and its store (else the task's lease or queue_timeout ends it)."""
    task_id = store = None
    if isinstance(message, Mapping):
        task_id, store = message.get("task_id"), message.get("store")
    logger.error("asyncwsgi: job message of task %s refused: %s", task_id, exc)
    if isinstance(task_id, str) and isinstance(store, str):
        # (No budget read from a bad message: an error answer stores no body.)
        _store(store, None).finish(
            task_id, error_result(500, f"the worker refused the task: {exc}")
        )


def load_app(import_name: str) -> WSGIApplication:
    """The WSGI application ``import_name`` names, unwrapped of any
    :class:`~asyncwsgi.AsyncMiddleware` around it: the middleware names the
    app its tasks run (``task_app``), so that a replayed request never
    becomes a task again, and the worker needs no part of the HTTP side."""
    app: Any = import_string(import_name)
    while (inner := getattr(app, "task_app", None)) is not None:
        app = inner
    if not callable(app):
        raise TypeError(f"{import_name!r} is not a WSGI application")
    result: WSGIApplication = app
    return result


_cache_lock = threading.RLock()  # _store() is called under it too
_cache_pid: int | None = None
_apps: dict[str, WSGIApplication] = {}
_stores: dict[tuple[str, int | None], Store] = {}
_runners: dict[tuple[str, str, int, float, int, int | None], TaskRunner] = {}


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


def _store(url: str, max_stored_bytes: int | None) -> Store:
    """This process's store opened from ``url`` with the byte budget
    ``max_stored_bytes``. One store per budget: deployments that share a store
    URL and a worker process may have budgets of their own, and jobs of both
    may run at once on a pool of threads (a budget set on a shared store by
    each job would be the last started job's for every writer)."""
    key = (url, max_stored_bytes)
    with _cache_lock:
        _forget_if_forked()
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = open_store(url)
            store.max_stored_bytes = max_stored_bytes
        return store


def worker_runner(app: str, url: str, job: Job) -> TaskRunner:
    """This process's runner for ``app`` and the job's store and limits: the
    app is imported and the store opened once, after the worker forked. The
    store has the web side's byte budget, so that a worker's result writers
    reserve from the same budget as the web side's."""
    key = (app, url, job.max_result, job.lease, job.spool_threshold, job.max_stored_bytes)
    with _cache_lock:
        _forget_if_forked()
        runner = _runners.get(key)
        if runner is None:
            wsgi_app = _apps.get(app)
            if wsgi_app is None:
                wsgi_app = _apps[app] = load_app(app)
            runner = _runners[key] = TaskRunner(
                wsgi_app,
                _store(url, job.max_stored_bytes),
                max_result=job.max_result,
                lease=job.lease,
                spool_threshold=job.spool_threshold,
            )
        return runner
