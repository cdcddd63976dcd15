"""queue_timeout: a task waiting in a broker that nobody consumes ends as 503
"not started in time", whichever process reads it first; a worker that comes
later never runs it (Celery's ``expires``), and the tasks that timed out
stop counting against ``max_pending``."""

from __future__ import annotations

import importlib
import time
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.stores import open_store

from .helpers import celery_worker, emptied_dbs, need, wait_done

pytestmark = pytest.mark.slow


@pytest.fixture
def queue_app(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    need("celery")

    broker, store = emptied_dbs(redis_url, 5, 6)
    monkeypatch.setenv("ASYNCWSGI_TEST_BROKER", broker)
    module = importlib.import_module("tests.apps.celery_queue_app")
    module = importlib.reload(module)  # the broker of this test
    module.store_url = store
    return module


def test_a_task_nobody_consumes_ends_as_503_and_is_never_run(queue_app, tmp_path):
    import redis

    store_url = queue_app.store_url
    mw = AsyncMiddleware(
        queue_app.app,
        paths=["/work/*"],
        store=store_url,
        executor=queue_app.executor(),
        queue_timeout=1.0,
        max_pending=2,
    )
    patient = AsyncMiddleware(
        queue_app.app, paths=["/work/*"], store=store_url, executor=queue_app.executor()
    )
    try:
        client = Client(mw)
        first = client.post("/work/first").headers["Location"]
        client.post("/work/second")
        assert client.post("/work/third").status_code == 503  # max_pending
        time.sleep(1.5)

        # Another process (its own store connection) applies the deadline:
        # the accepting process has nothing to do with it.
        other = open_store(store_url)
        try:
            record = other.get(first.rsplit("/", 1)[1])
            assert record is not None and record.state == "done" and record.result is not None
            assert record.result.status.startswith("503")
            assert b"not started in time" in record.result.body
        finally:
            other.close()
        response = wait_done(client, first, timeout=2)
        assert response.status_code == 503
        # the timed-out tasks no longer count against max_pending
        assert client.post("/work/fourth").status_code == 202
        time.sleep(1.5)  # the fourth expires too before any worker comes

        # A worker that comes late: the expired messages are discarded, the
        # fresh task (no queue timeout passed yet) runs.
        log = tmp_path / "worker.log"
        with celery_worker("tests.apps.celery_queue_app:celery_app", queue_app.QUEUE, log, "info"):
            fresh = Client(patient).post("/work/fresh").headers["Location"]
            assert wait_done(Client(patient), fresh, timeout=30).data == b"ran"
            runs = redis.Redis.from_url(queue_app.BROKER)
            try:
                assert runs.lrange(queue_app.RUNS_KEY, 0, -1) == [b"/work/fresh"]
            finally:
                runs.close()
            # Celery itself discarded the three expired messages (expires=).
            assert log.read_text(errors="replace").count("Discarding revoked task") == 3
    finally:
        mw.close(timeout=5)
        patient.close(timeout=5)
