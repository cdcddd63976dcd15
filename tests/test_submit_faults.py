"""What a submission answers when its executor cannot take the task: a queue
that is unavailable (a real broker killed) is a 503 with Retry-After; a bug
in an executor is a 500 logged once with its traceback. Either way no task
is left behind in the store."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from asyncwsgi import AsyncMiddleware
from asyncwsgi.executors import Executor, ThreadExecutor
from asyncwsgi.job import Job
from bench.services import RedisServer
from tests.helpers import need
from tests.redis_fixture import _need


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ran"]


def _stored_tasks(middleware: AsyncMiddleware) -> int:
    return sum(middleware.store.count_states().values())


def _refused(response: TestResponse) -> None:
    assert response.status_code == 503, response.data
    assert int(response.headers["Retry-After"]) >= 1
    assert "Location" not in response.headers


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "asyncwsgi" and "could not queue" in r.message]


def _a_broker_down_is_a_503(
    executor: Executor, broker: RedisServer, store: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the broker of ``executor`` killed, a submission is refused: 503,
    one error line without a traceback (the queue is down, not broken), and
    no task left in the store (a prefix of its own: the session's Redis holds
    other tests' tasks)."""
    store = f"{store}?prefix=submit-faults-{uuid.uuid4().hex}:"
    middleware = AsyncMiddleware(_app, paths=["/work"], store=store, executor=executor)
    try:
        broker.kill()
        caplog.clear()
        _refused(Client(middleware).post("/work", data=b"x"))
        lines = _lines(caplog)
        assert len(lines) == 1 and lines[0].levelno == logging.ERROR
        assert lines[0].exc_info is None
        assert _stored_tasks(middleware) == 0
    finally:
        middleware.close(5)


@pytest.fixture
def broker() -> Iterator[RedisServer]:
    with RedisServer(_need("redis-server")) as server:
        yield server


def test_a_celery_broker_that_is_down_is_a_503(
    broker: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    need("celery")
    from celery import Celery

    from asyncwsgi.executors.celery import CeleryExecutor

    celery_app = Celery("submit-faults", broker=broker.url(0))
    # Give up on the dead broker quickly: the default retries for seconds.
    celery_app.conf.broker_connection_timeout = 1
    celery_app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0}
    _a_broker_down_is_a_503(
        CeleryExecutor(celery_app, "tests.test_submit_faults:_app"), broker, redis_url, caplog
    )


def test_an_rq_queue_that_is_down_is_a_503(
    broker: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    need("rq")
    import redis
    from rq import Queue

    from asyncwsgi.executors.rq import RQExecutor

    queue = Queue("submit-faults", connection=redis.Redis.from_url(broker.url(0)))
    executor = RQExecutor(queue, "tests.test_submit_faults:_app")
    _a_broker_down_is_a_503(executor, broker, redis_url, caplog)


def test_a_pool_already_shut_down_is_a_503() -> None:
    executor = ThreadExecutor(2)
    middleware = AsyncMiddleware(_app, paths=["/work"], executor=executor)
    try:
        executor.shutdown(5)  # as a close() racing with a submission leaves it
        _refused(Client(middleware).post("/work", data=b"x"))
        assert _stored_tasks(middleware) == 0
    finally:
        middleware.close(5)


class _Broken(Executor):
    """An executor with a bug: its submit fails in a way no queue does."""

    def submit(self, job: Job) -> None:
        raise TypeError("a bug in the executor")

    def shutdown(self, timeout: float | None = None) -> bool:
        return True


def test_a_bug_in_an_executor_is_a_500_logged_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = AsyncMiddleware(_app, paths=["/work"], executor=_Broken())
    try:
        caplog.clear()
        response = Client(middleware).post("/work", data=b"x")
        assert response.status_code == 500, response.data
        assert "Location" not in response.headers
        logged = [r for r in caplog.records if r.name == "asyncwsgi" and r.exc_info]
        assert len(logged) == 1
        assert logged[0].exc_info is not None and logged[0].exc_info[0] is TypeError
        assert _stored_tasks(middleware) == 0
    finally:
        middleware.close(5)
