"""A web app whose tasks run on Celery workers, for tests/test_celery.py.

Web side: ``python -m gunicorn tests.apps.celery_web:application``.
Worker side: ``python -m celery -A tests.apps.celery_web:celery_app worker``.
Both read the broker and store URLs from ``ASYNCWSGI_TEST_BROKER`` and
``ASYNCWSGI_TEST_STORE`` (and the lease from ``ASYNCWSGI_TEST_LEASE``).
The app records each task run in the broker's Redis, under ``RUNS_KEY``.
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
from celery import Celery

from asyncwsgi import AsyncMiddleware
from asyncwsgi.executors.celery import CeleryExecutor

BROKER = os.environ.get("ASYNCWSGI_TEST_BROKER", "redis://127.0.0.1:6379/0")
STORE = os.environ.get("ASYNCWSGI_TEST_STORE", "redis://127.0.0.1:6379/1")
LEASE = float(os.environ.get("ASYNCWSGI_TEST_LEASE", "2"))
RUNS_KEY = "asyncwsgi-test:runs"

celery_app = Celery("celery_web", broker=BROKER)
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

_records: redis.Redis | None = None


def records() -> redis.Redis:
    global _records
    if _records is None:
        _records = redis.Redis.from_url(BROKER)
    return _records


def _json(start_response: Any, document: dict[str, Any], status: str = "200 OK") -> list[bytes]:
    body = json.dumps(document).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _celery_task_id() -> str | None:
    from celery import current_task

    if not current_task:  # a proxy: false outside a Celery task
        return None
    task_id: str | None = current_task.request.id
    return task_id


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    marker = query.get("marker", "")
    task = environ.get("asyncwsgi.task")
    where = {
        "pid": os.getpid(),
        "argv0": sys.argv[0],
        "celery_task_id": _celery_task_id(),
        "task_id": task.id if task is not None else None,
    }
    if path == "/pid":
        return _json(start_response, where)
    if task is None:
        return _json(start_response, {"error": "not a task"}, "400 Bad Request")
    records().rpush(RUNS_KEY, marker or task.id)
    if path == "/task/digest":
        # Read as a stream: a spooled body comes from the store, a piece at a time.
        digest, length, stream = hashlib.sha256(), 0, environ["wsgi.input"]
        while block := stream.read(65536):
            digest.update(block)
            length += len(block)
        return _json(start_response, {"sha256": digest.hexdigest(), "length": length, **where})
    if path == "/task/echo":
        body = environ["wsgi.input"].read()
        return _json(start_response, {"marker": marker, "body": body.decode(), **where})
    if path == "/task/slow":
        time.sleep(float(query.get("seconds", "1")))
        return _json(start_response, {"marker": marker, **where})
    if path == "/task/progress":
        task.set_progress(1, 3, "step 1 of 3")
        deadline = time.monotonic() + 20
        while not records().exists(f"asyncwsgi-test:release:{marker}"):
            if time.monotonic() > deadline:
                return _json(start_response, {"error": "never released"}, "504 Gateway Timeout")
            time.sleep(0.02)
        return _json(start_response, {"marker": marker, "finished": True, **where})
    if path == "/task/hang":
        records().set(f"asyncwsgi-test:pid:{marker}", os.getpid())
        time.sleep(60)
        return _json(start_response, {"marker": marker, **where})
    return _json(start_response, {"error": "no such path"}, "404 Not Found")


application = AsyncMiddleware(
    app,
    paths=["/task/*"],
    store=STORE,
    lease=LEASE,
    executor=CeleryExecutor(celery_app, "tests.apps.celery_web:application"),
)
