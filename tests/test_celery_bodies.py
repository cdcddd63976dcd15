"""A request body above spool_threshold reaches a Celery worker through the
store, never inside the broker message."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.stores.redis import RedisStore

from .helpers import budget_holds, celery_worker, emptied_dbs, redis_db, wait_done, wait_for
from .test_celery import Services, _need, services  # noqa: F401 (a fixture)

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

    from asyncwsgi.executors.celery import CeleryExecutor

    broker = redis_db(redis_url, 14)
    celery_app = Celery("bodies_test", broker=broker)
    queue = "asyncwsgi-test-nobody"
    store = RedisStore.from_url(redis_db(redis_url, 15), prefix="celery-bodies:")
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


def test_a_worker_reserves_from_the_web_sides_byte_budget(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The budget travels in the job message: a real Celery worker, whose
    store was opened from its URL alone, waits for room like the thread pool
    does, never past the web side's max_stored_bytes."""
    _need("celery")

    broker, store_url = emptied_dbs(redis_url, 12, 13)
    monkeypatch.setenv("ASYNCWSGI_TEST_BROKER", broker)
    budget_app = importlib.reload(importlib.import_module("tests.apps.celery_budget"))
    middleware = AsyncMiddleware(
        budget_app.app,
        paths=["/work/*"],
        store=store_url,
        executor=budget_app.executor(),
        spool_threshold=64 * 1024,
        max_stored_bytes=3 * 2**20,
        max_result=2 * 2**20 + 4096,
    )
    client = Client(middleware)
    first, second = (client.post("/work/big").headers["Location"] for _ in range(2))
    log = tmp_path / "worker.log"
    try:
        with celery_worker("tests.apps.celery_budget:celery_app", budget_app.QUEUE, log):
            budget_holds(client, middleware, (first, second), b"".join(budget_app.big()), log=log)
    finally:
        middleware.close(timeout=1)
        middleware.close(timeout=1)
        budget_app.celery_app.close()


def test_deployments_sharing_a_store_and_a_worker_keep_their_own_byte_budgets(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two deployments on one store URL, one with a byte budget of 3 MiB and
    one without, and a Celery worker of two threads running both. A task of
    the one without a budget, still running when a task of the budgeted one
    starts, stores its result whole at once: a job's budget is that of the
    deployment that sent it, not that of the last job the process started."""
    _need("celery")

    broker, store_url = emptied_dbs(redis_url, 12, 13)
    release = tmp_path / "release"
    monkeypatch.setenv("ASYNCWSGI_TEST_BROKER", broker)
    monkeypatch.setenv("ASYNCWSGI_TEST_RELEASE", str(release))
    budget_app = importlib.reload(importlib.import_module("tests.apps.celery_budget"))
    common: dict[str, Any] = {"paths": ["/work/*"], "store": store_url, "spool_threshold": 65536}
    budgeted = AsyncMiddleware(
        budget_app.app,
        executor=budget_app.executor(),
        max_stored_bytes=3 * 2**20,
        max_result=2 * 2**20 + 4096,
        **common,
    )
    # Its results may be larger than the other's whole budget.
    unbudgeted = AsyncMiddleware(
        budget_app.app, executor=budget_app.executor(), max_result=8 * 2**20, **common
    )
    whole = b"".join(budget_app.big())
    log = tmp_path / "worker.log"
    try:
        with celery_worker("tests.apps.celery_budget:celery_app", budget_app.QUEUE, log, threads=2):
            held = Client(unbudgeted).post("/work/held").headers["Location"]
            held_id = held.rsplit("/", 1)[1]
            assert wait_for(lambda: unbudgeted.store.get(held_id).state == "running", 30), (
                log.read_text()
            )
            client = Client(budgeted)
            big = wait_done(client, client.post("/work/big").headers["Location"], timeout=30)
            assert (big.status_code, big.data) == (200, whole)
            release.touch()
            answer = wait_done(Client(unbudgeted), held, timeout=15)
            assert (answer.status_code, answer.data) == (200, whole), log.read_text()
    finally:
        for middleware in (budgeted, unbudgeted):
            middleware.close(timeout=1)
        budget_app.celery_app.close()
