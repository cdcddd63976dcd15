"""A request body above spool_threshold reaches a Celery worker through the
store, never inside the broker message."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.stores.redis import RedisStore

from .test_celery import Services, _db, _need, services  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

BODY = os.urandom(3 * 2**20)


def test_a_large_body_reaches_the_worker_through_the_store(services: Services) -> None:  # noqa: F811
    location = services.web.submit("/task/digest", BODY)
    status, data = services.web.wait(location, timeout=60)
    assert status == 200, data
    answer: dict[str, Any] = json.loads(data)
    assert answer["sha256"] == hashlib.sha256(BODY).hexdigest()
    assert answer["length"] == len(BODY)
    assert answer["celery_task_id"] is not None  # it ran in the worker


def _nothing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return []


def test_the_broker_message_holds_the_bodys_digest_not_the_body(redis_url: str) -> None:
    _need("celery")
    import redis
    from celery import Celery

    from asyncwsgi.contrib.celery import CeleryExecutor

    broker = _db(redis_url, 14)
    celery_app = Celery("bodies_test", broker=broker)
    queue = "asyncwsgi-test-nobody"
    store = RedisStore.from_url(_db(redis_url, 15), prefix="celery-bodies:")
    client = redis.Redis.from_url(broker)
    try:
        client.delete(queue)
        middleware = AsyncMiddleware(
            _nothing,
            paths=["/task/*"],
            store=store,
            executor=CeleryExecutor(celery_app, "tests.apps.celery_web:application", queue=queue),
            spool_threshold=64 * 1024,
        )
        try:
            response = Client(middleware).post("/task/digest", data=BODY)
            assert response.status_code == 202
            task_id = response.headers["Location"].rsplit("/", 1)[1]
            (message,) = client.lrange(queue, 0, -1)  # nobody consumes this queue
            assert len(message) < 20_000  # the body is 3 MiB
            key = f"celery-bodies:body:{task_id}:request"
            assert store.client.llen(key) == 3  # three chunks of 1 MiB, in the store
            assert b"".join(store.client.lrange(key, 0, -1)) == BODY
        finally:
            middleware.close(5)
            celery_app.close()
    finally:
        store.client.flushdb()
        store.close()
        client.delete(queue)
        client.close()
