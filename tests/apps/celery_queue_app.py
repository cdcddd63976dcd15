"""A Celery app and a WSGI app for tests/test_queue_timeout.py: tasks go to a
queue of their own (``QUEUE``), which no worker consumes until the test
starts one; each run of the WSGI app is recorded in the broker's Redis under
``RUNS_KEY``.

Both sides read the broker URL from ``ASYNCWSGI_TEST_BROKER``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery

BROKER = os.environ.get("ASYNCWSGI_TEST_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = "asyncwsgi-queue-timeout"
RUNS_KEY = "asyncwsgi-test:queue-timeout-runs"

celery_app = Celery("celery_queue_app", broker=BROKER)
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    client = redis.Redis.from_url(BROKER)
    try:
        client.rpush(RUNS_KEY, environ.get("PATH_INFO", ""))
    finally:
        client.close()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ran"]


def executor() -> Any:
    from asyncwsgi.executors.celery import CeleryExecutor

    return CeleryExecutor(celery_app, "tests.apps.celery_queue_app:app", queue=QUEUE)


# The worker registers asyncwsgi.run when it imports this module.
executor()
