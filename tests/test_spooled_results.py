"""Results and request bodies of any size: spooled to the store's files,
replayed in chunks, bounded by max_result and max_stored_bytes, removed with
their task (in-process, through werkzeug's test client)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from wsgiref.util import FileWrapper

import pytest
from werkzeug.test import Client

from asyncwsgi.stores import MemoryStore

from .helpers import wait_done

KIB = 1024
MIB = 1024 * KIB


def _pattern(size: int) -> bytes:
    block = hashlib.sha256(str(size).encode()).digest() * (64 * KIB // 32)
    return (block * (size // len(block) + 1))[:size]


def streaming_app(environ, start_response):
    """``/work/<size>`` answers ``size`` bytes in 64 KiB chunks;
    ``/work/echo`` answers the SHA-256 of the request body it read."""
    path = environ["PATH_INFO"]
    if path == "/work/echo":
        digest = hashlib.sha256()
        stream = environ["wsgi.input"]
        while block := stream.read(64 * KIB):
            digest.update(block)
        body = digest.hexdigest().encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    size = int(path.rsplit("/", 1)[1])
    data = _pattern(size)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return (data[i : i + 64 * KIB] for i in range(0, size, 64 * KIB))


def _files(store: MemoryStore) -> list[str]:
    files = store._files
    if files is None:
        return []
    return sorted(name for name in os.listdir(files.path) if not name.startswith("."))


@pytest.fixture
def store(tmp_path):
    made = MemoryStore(results_dir=str(tmp_path / "results"))
    yield made
    made.close()


def test_a_large_result_is_a_file_replayed_byte_for_byte_and_removed_on_delete(wrap, store):
    mw = wrap(streaming_app, store=store, spool_threshold=256 * KIB)
    client = Client(mw)
    location = client.post(f"/work/{3 * MIB + 5}", buffered=True).headers["Location"]
    done = wait_done(client, location, buffered=True)
    assert done.status_code == 200
    assert done.data == _pattern(3 * MIB + 5)
    task_id = location.rsplit("/", 1)[1]
    assert _files(store) == [f"{task_id}.result"]
    assert store.stored_bytes == 3 * MIB + 5
    assert client.delete(location, buffered=True).status_code == 204
    assert _files(store) == []
    assert store.stored_bytes == 0


def test_a_small_result_stays_in_memory(wrap, store):
    client = Client(wrap(streaming_app, store=store, spool_threshold=256 * KIB))
    done = wait_done(client, client.post("/work/1000").headers["Location"], buffered=True)
    assert done.data == _pattern(1000)
    assert _files(store) == []


def test_an_expired_result_takes_its_file_with_it(wrap, store):
    client = Client(wrap(streaming_app, store=store, spool_threshold=KIB, result_ttl=0.3))
    location = client.post(f"/work/{MIB}", buffered=True).headers["Location"]
    assert wait_done(client, location, buffered=True).data == _pattern(MIB)
    assert len(_files(store)) == 1
    time.sleep(0.4)
    assert client.get(location, buffered=True).status_code == 410
    assert _files(store) == []
    assert store.stored_bytes == 0


def test_an_expired_result_leaves_the_disk_with_no_call_at_all(wrap, store):
    """The janitor: files and budget come back after result_ttl though
    nobody polls, lists or submits."""
    client = Client(wrap(streaming_app, store=store, spool_threshold=KIB, result_ttl=0.5))
    location = client.post(f"/work/{MIB}", buffered=True).headers["Location"]
    assert wait_done(client, location, buffered=True).data == _pattern(MIB)
    assert len(_files(store)) == 1
    deadline = time.monotonic() + 0.5 + 2 * 5.0 + 2
    while _files(store):  # a directory listing: not a call of the store
        assert time.monotonic() < deadline, "the expired result's file is still there"
        time.sleep(0.1)
    assert store.stored_bytes == 0


def test_a_spooled_request_body_reaches_the_app_and_is_removed_at_the_finish(wrap, store):
    release = threading.Event()

    def app(environ, start_response):
        release.wait(10)
        return streaming_app(environ, start_response)

    client = Client(wrap(app, store=store, spool_threshold=64 * KIB, max_body=8 * MIB))
    body = _pattern(5 * MIB)
    location = client.post("/work/echo", data=body, buffered=True).headers["Location"]
    task_id = location.rsplit("/", 1)[1]
    # Queued behind the app: the body waits in the store's directory, not in memory.
    assert _files(store) == [f"{task_id}.request"]
    assert store.stored_bytes == 5 * MIB
    release.set()
    done = wait_done(client, location, buffered=True)
    assert done.data == hashlib.sha256(body).hexdigest().encode()
    assert _files(store) == []
    assert store.stored_bytes == 0


def test_a_result_past_max_result_ends_as_a_500_that_says_so(wrap, store, caplog):
    client = Client(wrap(streaming_app, store=store, spool_threshold=64 * KIB, max_result=MIB))
    done = wait_done(client, client.post(f"/work/{2 * MIB}").headers["Location"], buffered=True)
    assert done.status_code == 500
    assert b"the result was too large" in done.data
    assert b"max_result (1048576 bytes)" in done.data
    assert "max_result" in caplog.text
    assert _files(store) == []
    assert store.stored_bytes == 0


def test_max_result_default_is_a_gibibyte(wrap):
    assert wrap(streaming_app).max_result == 2**30


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_store(request, tmp_path):
    """A store of each kind, with its own directory (or Redis database)."""
    if request.param == "memory":
        made = MemoryStore(results_dir=str(tmp_path / "results"))
    elif request.param == "sqlite":
        from asyncwsgi.stores import SQLiteStore

        made = SQLiteStore(str(tmp_path / "tasks.db"))
    else:
        from asyncwsgi.stores.redis import RedisStore

        made = RedisStore.from_url(request.getfixturevalue("redis_url"))
        made.client.flushdb()
    yield made
    made.close()


def test_a_budget_refuses_new_tasks_at_the_door_and_never_fails_an_accepted_one(
    wrap, any_store, caplog
):
    """Each result's writer reserves its worst case (max_result) before it
    writes; one that finds no room waits for it, and meanwhile new tasks get
    503. Nothing accepted ends as 500 for want of room, and the budget is
    never exceeded."""
    gate = threading.Event()

    def app(environ, start_response):
        gate.wait(10)
        return streaming_app(environ, start_response)

    store = any_store
    budget = 3 * MIB
    mw = wrap(
        app,
        store=store,
        spool_threshold=64 * KIB,
        max_stored_bytes=budget,
        max_result=2 * MIB + 4 * KIB,  # the body and its headers
        max_workers=2,
    )
    assert store.max_stored_bytes == mw.max_stored_bytes == budget
    client = Client(mw)
    # Both accepted: nothing is stored or reserved yet.
    first = client.post(f"/work/{2 * MIB}", buffered=True)
    second = client.post(f"/work/{2 * MIB}", buffered=True)
    assert first.status_code == second.status_code == 202
    gate.set()
    # One writer reserves 2 MiB + 4 KiB; the other waits for room...
    deadline = time.monotonic() + 10
    while "waits for room" not in caplog.text:
        assert time.monotonic() < deadline, "no writer waited for room"
        assert store.stored_bytes <= budget
        time.sleep(0.02)
    # ... and new tasks are refused at the door meanwhile.
    refused = client.post("/work/10", buffered=True)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    assert b"full" in refused.data
    # The writer with room ends; the waiting one stays at 202 meanwhile.
    while True:
        codes = [
            client.get(r.headers["Location"], buffered=True).status_code for r in (first, second)
        ]
        assert time.monotonic() < deadline, codes
        assert store.stored_bytes <= budget
        if 200 in codes:
            break
        time.sleep(0.02)
    assert sorted(codes) == [200, 202]
    ended = [(first, second)[codes.index(200)]]
    stored = wait_done(client, ended[0].headers["Location"], buffered=True)
    assert stored.data == _pattern(2 * MIB)
    assert store.stored_bytes == 2 * MIB  # what was not written was given back
    # Its result goes: the waiting task gets the room and ends with its answer.
    assert client.delete(ended[0].headers["Location"], buffered=True).status_code == 204
    other = second if ended[0] is first else first
    late = wait_done(client, other.headers["Location"], buffered=True)
    assert late.status_code == 200
    assert late.data == _pattern(2 * MIB)
    assert store.stored_bytes == 2 * MIB
    # No room for another worst case next to it: refused, not accepted to fail.
    assert client.post("/work/10", buffered=True).status_code == 503
    assert client.delete(other.headers["Location"], buffered=True).status_code == 204
    assert store.stored_bytes == 0
    again = client.post(f"/work/{MIB}", buffered=True)
    assert again.status_code == 202
    assert wait_done(client, again.headers["Location"], buffered=True).data == _pattern(MIB)


def test_a_max_result_above_the_budget_is_refused_at_construction(wrap, store):
    with pytest.raises(ValueError, match="max_result .* is larger than max_stored_bytes"):
        wrap(streaming_app, store=store, max_stored_bytes=64 * MIB, max_result=65 * MIB)


def test_a_spooled_body_is_sent_through_the_servers_file_wrapper(wrap, store):
    mw = wrap(streaming_app, store=store, spool_threshold=KIB)
    client = Client(mw)
    location = client.post(f"/work/{MIB}", buffered=True).headers["Location"]
    wait_done(client, location, buffered=True).close()
    wrapped = []

    def file_wrapper(file, block_size=8192):
        wrapped.append(file)
        return FileWrapper(file, block_size)

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": location,
        "wsgi.file_wrapper": file_wrapper,
    }
    started = []
    body = mw(environ, lambda status, headers, exc_info=None: started.append(status))
    try:
        assert b"".join(body) == _pattern(MIB)
    finally:
        body.close()  # type: ignore[attr-defined]
    assert started == ["200 OK"] and len(wrapped) == 1 and wrapped[0].closed


def test_head_sends_no_body(wrap, store):
    client = Client(wrap(streaming_app, store=store, spool_threshold=KIB))
    location = client.post(f"/work/{MIB}", buffered=True).headers["Location"]
    wait_done(client, location, buffered=True).close()
    head = client.head(location, buffered=True)
    assert head.status_code == 200 and head.data == b""


def test_a_crashed_process_leaves_nothing_the_next_store_does_not_remove(tmp_path):
    results = tmp_path / "results"
    code = (
        "import os, sys\n"
        "from asyncwsgi.stores import MemoryStore\n"
        f"store = MemoryStore(results_dir={str(results)!r})\n"
        "sink = store.open_sink('t' * 32, 'result')\n"
        "sink.write(b'x' * 100000)\n"
        "os._exit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-c", code], check=False, env=env, timeout=60)
    (left,) = os.listdir(results)
    assert os.listdir(results / left)  # the dead process's files are still there
    store = MemoryStore(results_dir=str(results))
    try:
        sink = store.open_sink("u" * 32, "result")
        sink.discard()
        assert [str(results / name) for name in os.listdir(results)] == [store._files.path]
    finally:
        store.close()
    assert os.listdir(results) == []


def test_a_task_deleted_while_it_spools_leaves_nothing(wrap, store):
    halfway = threading.Event()
    release = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        yield b"x" * (2 * MIB)
        halfway.set()
        release.wait(10)
        yield b"y" * MIB

    client = Client(wrap(app, store=store, spool_threshold=KIB))
    location = client.post("/work/slow").headers["Location"]
    assert halfway.wait(10)
    task_id = location.rsplit("/", 1)[1]
    assert _files(store) == [f"{task_id}.result"]  # being written
    assert client.delete(location, buffered=True).status_code == 204
    release.set()
    deadline = time.monotonic() + 10
    while (_files(store) or store.stored_bytes) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _files(store) == [] and store.stored_bytes == 0
