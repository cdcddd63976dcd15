"""A Celery app and a WSGI app for the byte-budget test in
tests/test_celery_bodies.py: each task answers 2 MiB, in 64 KiB chunks, so
that its result is spooled into the store and reserves from the budget.

Both sides read the broker URL from ``ASYNCWSGI_TEST_BROKER``. ``/work/held``
answers the same once the file named by ``ASYNCWSGI_TEST_RELEASE`` exists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from celery import Celery

BROKER = os.environ.get("ASYNCWSGI_TEST_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = "asyncwsgi-budget"

celery_app = Celery("celery_budget", broker=BROKER)
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


def big() -> Iterator[bytes]:
    return (bytes([i]) * 65536 for i in range(32))


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/work/held":
        release = os.environ["ASYNCWSGI_TEST_RELEASE"]
        deadline = time.monotonic() + 30
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return big()


def executor() -> Any:
    from asyncwsgi.executors.celery import CeleryExecutor

    return CeleryExecutor(celery_app, "tests.apps.celery_budget:app", queue=QUEUE)


# The worker registers asyncwsgi.run when it imports this module.
executor()
