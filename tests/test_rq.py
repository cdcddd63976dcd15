"""RQExecutor: what goes on the RQ queue, and cancelling through RQ.

The jobs are read back from a real redis-server, with nobody consuming the
queue (the contract suite, tests/test_executor_contract.py, runs them on
real ``rq worker`` processes).
"""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from bench.services import RedisServer
from tests.helpers import budget_holds, need, program, rq_worker, wait_done

need("rq")
import redis  # noqa: E402
import rq  # noqa: E402

APP = "tests.test_rq:_wsgi_app"
ROOT = Path(__file__).resolve().parent.parent


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    executable = program("redis-server")
    with RedisServer(executable) as server:
        yield server


@pytest.fixture
def queue(redis_server: RedisServer) -> Iterator[Any]:
    connection = redis.Redis.from_url(redis_server.url(0))
    connection.flushall()
    yield rq.Queue("reports", connection=connection)
    connection.close()


def _middleware(queue: Any, **options: Any) -> AsyncMiddleware:
    from asyncwsgi.executors.rq import RQExecutor

    store = queue.connection.connection_pool.connection_kwargs
    url = f"redis://127.0.0.1:{store['port']}/1"
    options.setdefault("paths", ["/work"])
    return AsyncMiddleware(_wsgi_app, store=url, executor=RQExecutor(queue, APP), **options)


def test_memory_store_is_refused(queue: Any) -> None:
    from asyncwsgi.executors.rq import RQExecutor

    with pytest.raises(ValueError, match="shared store"):
        AsyncMiddleware(_wsgi_app, paths=["/x"], executor=RQExecutor(queue, APP))


def test_the_job_holds_the_message_and_nothing_else_of_the_request(queue: Any) -> None:
    outer_object = object()

    def outer(environ: dict[str, Any], start_response: Any) -> Any:
        environ["outer.object"] = outer_object
        environ["outer.text"] = "kept"
        return middleware(environ, start_response)

    middleware = _middleware(queue)
    body = b"secret-body-" + os.urandom(16)
    response = Client(outer).post("/work?q=1", data=body, headers={"X-Custom": "v"})
    assert response.status_code == 202
    task_id = response.headers["Location"].rsplit("/", 1)[1]

    job = rq.job.Job.fetch(task_id, connection=queue.connection)
    assert job.func_name == "asyncwsgi.executors.rq.run"
    assert job.kwargs == {}
    app, message = job.args
    assert app == APP
    assert set(message) == {
        "version",
        "task_id",
        "environ",
        "body",
        "accepted",
        "pattern",
        "deadline",
        "queued_until",
        "store",
        "max_result",
        "max_stored_bytes",
        "lease",
        "spool_threshold",
    }
    assert message["task_id"] == task_id
    assert base64.b64decode(message["body"]) == body
    environ = message["environ"]
    assert environ["HTTP_X_CUSTOM"] == "v" and environ["outer.text"] == "kept"
    assert "outer.object" not in environ
    assert all(type(v) is str for k, v in environ.items() if k != "wsgi.multiprocess")
    # Not in the description either (RQ's default repeats the arguments there).
    assert job.description == f"asyncwsgi task {task_id}"
    raw = queue.connection.hgetall(f"rq:job:{task_id}")
    encoded = message["body"].encode()
    assert zlib.decompress(raw.pop(b"data")).count(encoded) == 1  # RQ compresses the call
    assert not any(encoded in value or body in value for value in raw.values())
    assert job.result_ttl == 0
    middleware.close(timeout=1)


@pytest.mark.parametrize(
    ("timeout", "kill_after", "job_timeout"),
    [(None, 5.0, -1), (10.0, 5.0, 15), (1.5, 0.2, 2)],
    ids=["none", "whole", "rounded-up"],
)
def test_the_job_timeout_is_the_timeout_and_kill_after(
    queue: Any, timeout: float | None, kill_after: float, job_timeout: int
) -> None:
    from asyncwsgi.executors.rq import RQExecutor

    store = queue.connection.connection_pool.connection_kwargs
    middleware = AsyncMiddleware(
        _wsgi_app,
        paths=["/work"],
        store=f"redis://127.0.0.1:{store['port']}/1",
        timeout=timeout,
        executor=RQExecutor(queue, APP, kill_after=kill_after),
    )
    response = Client(middleware).post("/work")
    task_id = response.headers["Location"].rsplit("/", 1)[1]
    job = rq.job.Job.fetch(task_id, connection=queue.connection)
    assert job.timeout == job_timeout
    deadline = job.args[1]["deadline"]
    assert (deadline is None) == (timeout is None)
    middleware.close(timeout=1)


def test_delete_of_a_queued_task_cancels_its_job(queue: Any) -> None:
    middleware = _middleware(queue)
    client = Client(middleware)
    location = client.post("/work").headers["Location"]
    task_id = location.rsplit("/", 1)[1]
    assert queue.job_ids == [task_id]

    assert client.delete(location).status_code == 204
    job = rq.job.Job.fetch(task_id, connection=queue.connection)
    assert job.get_status() == rq.job.JobStatus.CANCELED
    assert queue.job_ids == []
    assert task_id in rq.registry.CanceledJobRegistry(queue=queue).get_job_ids()
    middleware.close(timeout=1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("worker_class", "preloaded"),
    [("rq.Worker", False), ("asyncwsgi.executors.rq.Worker", True)],
    ids=["rq-default", "preloading"],
)
def test_the_preloading_worker_imports_the_app_before_it_forks(
    queue: Any, worker_class: str, preloaded: bool
) -> None:
    from asyncwsgi.executors.rq import RQExecutor
    from tests.apps.imported_where import app

    port = queue.connection.connection_pool.connection_kwargs["port"]
    middleware = AsyncMiddleware(
        app,
        paths=["/work"],
        store=f"redis://127.0.0.1:{port}/1",
        executor=RQExecutor(queue, "tests.apps.imported_where:app"),
    )
    client = Client(middleware)
    locations = [client.post("/work").headers["Location"] for _ in range(3)]
    with rq_worker(f"redis://127.0.0.1:{port}/0", worker_class=worker_class):
        responses = [wait_done(client, location, timeout=60) for location in locations]
    answers = []
    for response in responses:
        assert response.status_code == 200, response.get_data()
        imported_by, run_by = map(int, response.get_data().split())
        answers.append((imported_by, run_by))
    horses = {run_by for _, run_by in answers}
    assert len(horses) == 3  # a work horse per job, either way
    importers = {imported_by for imported_by, _ in answers}
    if preloaded:
        # Imported once, by the worker, before the horses were forked.
        assert len(importers) == 1 and not importers & horses
    else:
        assert importers == horses
    middleware.close(timeout=1)


@pytest.mark.slow
def test_an_app_the_worker_cannot_import_ends_the_task_as_500(queue: Any) -> None:
    from asyncwsgi.executors.rq import RQExecutor

    port = queue.connection.connection_pool.connection_kwargs["port"]
    middleware = AsyncMiddleware(
        _wsgi_app,
        paths=["/work"],
        store=f"redis://127.0.0.1:{port}/1",
        executor=RQExecutor(queue, "tests.apps.no_such_module:app"),
    )
    client = Client(middleware)
    location = client.post("/work").headers["Location"]
    with rq_worker(f"redis://127.0.0.1:{port}/0", logging_level="CRITICAL"):
        # Not left queued until its queue_timeout: ended as soon as a worker took it.
        response = wait_done(client, location, timeout=60)
    assert response.status_code == 500, response.get_data()
    assert b"could not load" in response.get_data()
    middleware.close(timeout=1)


def _big_app(environ: dict[str, Any], start_response: Any) -> Any:
    """``/work/big``: 2 MiB in 64 KiB chunks."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return (bytes([i]) * 65536 for i in range(32))


@pytest.mark.slow
def test_a_worker_reserves_from_the_web_sides_byte_budget(queue: Any) -> None:
    """The budget travels in the job: a worker whose store was opened from
    a URL alone waits for room like the thread pool does, never past it."""
    from asyncwsgi.executors.rq import RQExecutor

    port = queue.connection.connection_pool.connection_kwargs["port"]
    middleware = AsyncMiddleware(
        _big_app,
        paths=["/work/*"],
        store=f"redis://127.0.0.1:{port}/1",
        executor=RQExecutor(queue, "tests.test_rq:_big_app"),
        spool_threshold=64 * 1024,
        max_stored_bytes=3 * 2**20,
        max_result=2 * 2**20 + 4096,
    )
    client = Client(middleware)
    first, second = (client.post("/work/big").headers["Location"] for _ in range(2))
    whole = b"".join(_big_app({}, lambda *a: None))
    try:
        with rq_worker(f"redis://127.0.0.1:{port}/0"):
            budget_holds(client, middleware, (first, second), whole, timeout=30)
    finally:
        middleware.close(timeout=1)
