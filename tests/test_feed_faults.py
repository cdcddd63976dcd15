"""What the event stream and the store gauges of ``/metrics`` do when the store
fails them: a store fault (a real Redis killed) is the store being down, told
as such; anything else is a bug and is raised, not reported as a store fault
(issue 23: catch what you mean)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import MemoryStore, TaskRecord
from bench.services import RedisServer
from tests.helpers import program

EVENTS = {"Accept": "text/event-stream"}
# Short socket timeouts: a killed server is seen within a second or two.
_QUICK = "?socket_timeout=2&socket_connect_timeout=1"


def held_app(release: threading.Event) -> Any:
    """An app whose task runs until ``release`` is set (at most 30 s)."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        release.wait(30)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    return app


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer(program("redis-server")) as server:
        yield server


class _BuggyWatch(MemoryStore):
    def watch(self, task_id: str, seen: TaskRecord | None, timeout: float) -> TaskRecord | None:
        raise TypeError("a bug in watch")


class _BuggyCount(MemoryStore):
    def _count_states(self) -> dict[str, int]:
        raise TypeError("a bug in count_states")


def test_event_stream_ends_when_the_redis_store_dies(wrap: Any, redis: RedisServer) -> None:
    release = threading.Event()
    client = Client(wrap(held_app(release), store=redis.url(0) + _QUICK, max_wait=30))
    try:
        location = client.post("/work/x").headers["Location"]
        stream = client.get(location, headers=EVENTS, buffered=False)
        assert stream.status_code == 200
        chunks = iter(stream.response)
        assert next(chunks).startswith(b"retry:")
        assert b"event: progress" in next(chunks)
        redis.kill()
        rest = b"".join(chunks)  # the stream ends instead of hanging or raising
        stream.close()
        assert b"event: done" not in rest
        again = client.get(location, headers=EVENTS)
        assert again.status_code == 503
        assert again.headers["Retry-After"]
    finally:
        release.set()
        if redis.proc.poll() is not None:
            redis.start()  # so that the task's result can be stored and the pool end


def test_a_bug_in_the_stores_watch_is_raised_not_a_store_error(wrap: Any) -> None:
    release = threading.Event()
    client = Client(wrap(held_app(release), store=_BuggyWatch(), max_wait=30))
    try:
        location = client.post("/work/x").headers["Location"]
        stream = client.get(location, headers=EVENTS, buffered=False)
        chunks = iter(stream.response)
        assert next(chunks).startswith(b"retry:")
        assert b"event: progress" in next(chunks)
        with pytest.raises(TypeError, match="a bug in watch"):
            next(chunks)
        stream.close()
    finally:
        release.set()


def test_store_up_is_0_while_the_redis_store_is_down(wrap: Any, redis: RedisServer) -> None:
    from tests.test_metrics import parse

    client = Client(wrap(held_app(threading.Event()), store=redis.url(0) + _QUICK,
                         metrics_path="/metrics"))  # fmt: skip
    assert parse(client.get("/metrics").get_data(as_text=True))["asyncwsgi_store_up"] == 1
    redis.kill()
    scraped = client.get("/metrics")
    assert scraped.status_code == 200
    samples = parse(scraped.get_data(as_text=True))
    assert samples["asyncwsgi_store_up"] == 0
    assert "asyncwsgi_tasks_queued" not in samples


def test_a_bug_in_counting_is_raised_not_store_up_0(wrap: Any) -> None:
    client = Client(wrap(held_app(threading.Event()), store=_BuggyCount(),
                         metrics_path="/metrics"))  # fmt: skip
    with pytest.raises(TypeError, match="a bug in count_states"):
        client.get("/metrics")
