"""A spooled result on Redis is read ahead of the server that sends it:
several chunks per round trip, fetched by a thread while the last batch is
written; every range comes back exact, and a reader that stops early stops
the thread."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterator

import pytest

from asyncwsgi.stores.redis import RedisStore
from asyncwsgi.task import Body


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    # Chunks of 1000 bytes; the tests take the read ahead down to a few
    # chunks per round trip, so that ranges cross batch boundaries.
    made = RedisStore(redis_url, prefix="read-ahead-test:", chunk_size=1000)
    try:
        yield made
    finally:
        made.close()


def spooled(store: RedisStore, size: int) -> tuple[Body, bytes]:
    data = secrets.token_bytes(size)
    sink = store.open_sink(secrets.token_hex(8), "result")
    sink.write(data)
    return sink.commit(len(data), hashlib.sha256(data).hexdigest()), data


@pytest.mark.parametrize(
    ("start", "stop"),
    [(0, 25_500), (0, 1), (999, 1001), (1000, 2000), (1, 25_499), (24_000, 25_500), (7, 7)],
)
def test_every_range_comes_back_exact(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, start: int, stop: int
) -> None:
    from asyncwsgi.stores.redis import bodies

    monkeypatch.setattr(bodies, "_READ_AHEAD", 3000)  # 3 chunks per round trip
    body, data = spooled(store, 25_500)
    assert b"".join(body.chunks(start, stop)) == data[start:stop]


def read_ahead_threads() -> int:
    return sum(t.name == "asyncwsgi-read-ahead" for t in threading.enumerate())


def test_a_reader_that_stops_early_stops_the_thread(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncwsgi.stores.redis import bodies

    monkeypatch.setattr(bodies, "_READ_AHEAD", 3000)
    body, data = spooled(store, 126_000)  # 42 batches of 3 chunks
    before = read_ahead_threads()
    reader = body.chunks(0, body.size)
    assert next(reader) == data[:1000]
    assert read_ahead_threads() == before + 1
    reader.close()
    deadline = time.monotonic() + 5
    while read_ahead_threads() > before:
        assert time.monotonic() < deadline, "the read-ahead thread outlived its reader"
        time.sleep(0.01)
