"""One web app, its tasks run by the engine the environment names, for
tests/test_executor_contract.py.

Web side: ``python -m gunicorn tests.apps.engines:application``; worker
side: the engine's own worker command (see the test's fixtures). Both read:

- ``ASYNCWSGI_TEST_ENGINE``: ``thread``, ``celery``, ``rq``, ``django-db``
  (django-tasks-db's database backend) or ``django-rq`` (django-tasks-rq);
- ``ASYNCWSGI_TEST_REDIS``: a Redis URL: the broker or queue of Celery, RQ
  and django-rq, and where the app records what it did;
- ``ASYNCWSGI_TEST_STORE``, ``ASYNCWSGI_TEST_LEASE``: the task store and lease;
- ``ASYNCWSGI_TEST_DJANGO_DB``: the SQLite file of the Django engines.

``/task/*`` is always a task; ``/echo`` is a task only with
``Prefer: respond-async``, so that the same request can be answered
directly and as a task, and the two compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

import redis
from werkzeug.wrappers import Request

from asyncwsgi import AsyncMiddleware, Executor, ThreadExecutor

ENGINE = os.environ.get("ASYNCWSGI_TEST_ENGINE", "thread")
REDIS = os.environ.get("ASYNCWSGI_TEST_REDIS", "redis://127.0.0.1:6379/0")
STORE = os.environ.get("ASYNCWSGI_TEST_STORE", "redis://127.0.0.1:6379/1")
LEASE = float(os.environ.get("ASYNCWSGI_TEST_LEASE", "2"))
APP = "tests.apps.engines:middleware"
QUEUE = "asyncwsgi"  # the queue the workers consume
IDLE_QUEUE = "idle"  # a queue nobody consumes

if ENGINE.startswith("django"):
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.engines_settings")
    django.setup()

_celery_app: Any = None
if ENGINE == "celery":
    from celery import Celery

    _celery_app = Celery("engines", broker=REDIS)
    _celery_app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
    )
celery_app = _celery_app


def make_executor(queue: str = QUEUE, kill_after: float = 5.0) -> Executor:
    """This engine's executor, sending to ``queue``."""
    if ENGINE == "thread":
        return ThreadExecutor(1)
    if ENGINE == "celery":
        from asyncwsgi.executors.celery import CeleryExecutor

        return CeleryExecutor(celery_app, APP, queue=queue, kill_after=kill_after)
    if ENGINE == "rq":
        from rq import Queue

        from asyncwsgi.executors.rq import RQExecutor

        connection = redis.Redis.from_url(REDIS)
        return RQExecutor(Queue(queue, connection=connection), APP, kill_after=kill_after)
    if ENGINE in ("django-db", "django-rq"):
        from asyncwsgi.executors.django_tasks import DjangoTasksExecutor

        return DjangoTasksExecutor(APP, queue_name=queue)
    raise ValueError(f"unknown engine {ENGINE!r}")


_records: redis.Redis | None = None


def records() -> redis.Redis:
    global _records
    if _records is None:
        _records = redis.Redis.from_url(REDIS)
    return _records


def _json(start_response: Any, document: dict[str, Any], status: str = "200 OK") -> list[bytes]:
    body = json.dumps(document).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _wait_for(key: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not records().exists(key):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    marker = query.get("marker", "")
    task = environ.get("asyncwsgi.task")
    where = {"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[:3]}
    if path == "/pid":
        return _json(start_response, where)
    if path == "/echo" or path == "/task/echo":
        if task is not None:
            records().rpush("runs", marker)
        # Read as a framework does (werkzeug honours CONTENT_LENGTH and
        # wsgi.input_terminated), not by reading the stream to its end.
        body = Request(environ).get_data()
        strings = {k: v for k, v in environ.items() if type(v) is str}
        return _json(
            start_response,
            {
                "environ": strings,
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "task": task is not None,
                **where,
            },
        )
    if task is None:
        return _json(start_response, {"error": "not a task"}, "400 Bad Request")
    records().rpush("runs", marker)
    if path == "/task/hold":
        released = _wait_for(f"release:{marker}", 20)
        return _json(start_response, {"released": released, **where})
    if path == "/task/progress":
        task.set_progress(1, 3, "step 1 of 3")
        released = _wait_for(f"release:{marker}", 20)
        return _json(start_response, {"released": released, **where})
    if path == "/task/cancel":
        deadline = time.monotonic() + 20
        while not task.cancelled:
            if time.monotonic() > deadline:
                return _json(start_response, {"cancelled": False}, "504 Gateway Timeout")
            time.sleep(0.02)
        records().set(f"saw-cancel:{marker}", 1)
        return _json(start_response, {"cancelled": True})
    if path == "/task/hang":
        records().set(f"pid:{marker}", os.getpid())
        time.sleep(float(query.get("seconds", "30")))
        return _json(start_response, {"hung": True, **where})
    return _json(start_response, {"error": "no such path"}, "404 Not Found")


middleware = AsyncMiddleware(
    app,
    paths=["/task/*"],
    prefer_paths=["/echo"],
    store=STORE,
    lease=LEASE,
    executor=make_executor(),
)


def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The middleware, each response saying which web process gave it."""
    pid = str(os.getpid())

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, ("X-Web-Pid", pid)], exc_info)

    return middleware(environ, start)
