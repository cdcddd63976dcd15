"""Spooled bodies in every store: kept out of process memory, counted against
max_stored_bytes, removed with their task (finish, delete, expiry, a lost
verdict), and read back in pieces."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from asyncwsgi.capture import Spool
from asyncwsgi.results import lost_result
from asyncwsgi.stores import Store, StoreFull
from asyncwsgi.task import Body, BodyKind, Result

from . import test_store_contract as contract
from .test_store_contract import new_record

store_factory = contract.store_factory  # every store kind, as in the contract
pass_time = contract.pass_time

MIB = 2**20
DATA = hashlib.sha256(b"x").digest() * (3 * MIB // 32) + b"tail!"


def spool(store: Store, task_id: str, kind: BodyKind, data: bytes = DATA) -> Spool:
    body = Spool(0, lambda: store.open_sink(task_id, kind))
    try:
        for i in range(0, len(data), 65536):
            body.write(data[i : i + 65536])
    except BaseException:
        body.discard()
        raise
    return body


def read_all(body: Body) -> bytes:
    with body.open() as reader:
        return reader.read()


def gone(body: Body) -> bool:
    try:
        with body.open() as reader:
            reader.read(1)
    except (FileNotFoundError, OSError):
        return True
    return False


def stored(store: Store) -> int:
    return int(store.stored_bytes)  # type: ignore[attr-defined]


def test_a_spooled_result_is_kept_counted_and_removed_on_delete(store_factory):
    store = store_factory()
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, time.time() + 30)
    writer = spool(store, record.id, "result")
    body = writer.result()
    assert store.finish(record.id, Result("200 OK", [], body))
    writer.close()
    assert stored(store) == len(DATA)
    got = store.get(record.id)
    assert got is not None and got.result is not None
    kept = got.result.body
    assert isinstance(kept, Body)
    assert kept.size == len(DATA) and kept.sha256 == hashlib.sha256(DATA).hexdigest()
    assert read_all(kept) == DATA
    with kept.open() as reader:
        reader.seek(len(DATA) - 1000)
        assert reader.read() == DATA[-1000:]
        reader.seek(MIB - 10)
        assert reader.read(20) == DATA[MIB - 10 : MIB + 10]
    assert store.delete(record.id)
    assert gone(kept)
    assert stored(store) == 0


def test_a_spooled_request_body_goes_at_the_finish(store_factory):
    store = store_factory()
    record = new_record()
    writer = spool(store, record.id, "request")
    body = writer.result()
    assert store.create(record)
    writer.close()
    assert stored(store) == len(DATA)
    assert read_all(body) == DATA
    assert store.start(record.id, time.time() + 30)
    assert store.finish(record.id, Result("200 OK", [], b"done"))
    assert gone(body)
    assert stored(store) == 0


def test_an_expired_result_takes_its_body(store_factory, pass_time):
    store = store_factory(tombstone_ttl=60)
    record = new_record(ttl=0.2)
    assert store.create(record)
    writer = spool(store, record.id, "result")
    assert store.finish(record.id, Result("200 OK", [], writer.result()))
    writer.close()
    assert stored(store) == len(DATA)
    pass_time(0.3)
    expired = store.get(record.id)
    assert expired is not None and expired.state == "expired"
    assert stored(store) == 0


def test_expire_removes_an_expired_body_without_reading_its_task(store_factory, pass_time):
    store = store_factory(tombstone_ttl=60)
    record = new_record(ttl=0.2)
    assert store.create(record)
    writer = spool(store, record.id, "result")
    body = writer.result()
    assert store.finish(record.id, Result("200 OK", [], body))
    writer.close()
    pass_time(0.3)
    store.expire()
    assert gone(body)
    assert stored(store) == 0


def test_a_lost_verdict_drops_what_the_writer_spooled(store_factory):
    store = store_factory()
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, time.time() + 30)
    writer = spool(store, record.id, "result")
    assert store.finish(record.id, lost_result())
    assert stored(store) == 0
    writer.discard()  # what the runner does when its finish is refused
    assert stored(store) == 0


def test_the_budget_refuses_new_tasks_and_a_body_past_it(store_factory):
    store = store_factory(max_stored_bytes=4 * MIB)
    first = new_record()
    assert store.create(first)
    writer = spool(store, first.id, "result")
    assert store.finish(first.id, Result("200 OK", [], writer.result()))
    writer.close()
    second = new_record()
    assert store.create(second)  # 3 MiB of 4 held: still room
    with pytest.raises(StoreFull):
        spool(store, second.id, "result")
    assert stored(store) <= 4 * MIB
    third = spool(store, new_record().id, "request", DATA[: MIB - 5])
    third.result()
    third.close()
    with pytest.raises(StoreFull):
        store.create(new_record())
    assert store.delete(first.id)
    assert store.create(new_record())


def test_a_reservation_is_all_or_nothing_and_gives_back_what_was_not_written(store_factory):
    store = store_factory(max_stored_bytes=4 * MIB)
    first, second = new_record(), new_record()
    assert store.create(first) and store.create(second)
    sink = store.open_sink(first.id, "result")
    sink.reserve(3 * MIB)
    assert stored(store) == 3 * MIB
    other = store.open_sink(second.id, "result")
    with pytest.raises(StoreFull):
        other.reserve(2 * MIB)  # only 1 MiB is free: none of it is taken
    other.discard()
    assert stored(store) == 3 * MIB
    sink.write(DATA[:MIB])  # within the reservation: takes nothing more
    assert stored(store) == 3 * MIB
    body = sink.commit(MIB, hashlib.sha256(DATA[:MIB]).hexdigest())
    assert stored(store) == MIB
    assert store.finish(first.id, Result("200 OK", [], body))
    sink.close()
    assert read_all(store.get(first.id).result.body) == DATA[:MIB]  # type: ignore[union-attr]


def test_a_task_is_refused_without_the_room_it_asks_for_or_while_a_writer_waits(store_factory):
    store = store_factory(max_stored_bytes=4 * MIB)
    with pytest.raises(StoreFull):
        store.create(new_record(), room=5 * MIB)
    assert store.create(new_record(), room=4 * MIB)
    store.want_room(30)
    with pytest.raises(StoreFull):
        store.create(new_record())
    # The writer has its room: new tasks are taken again.
    store.want_room(0)
    assert store.create(new_record(), room=4 * MIB)


@pytest.mark.parametrize("written", [0, 1000], ids=["before-any-write", "mid-write"])
def test_a_writer_whose_task_was_deleted_is_refused_its_next_write(store_factory, written):
    """The reservation went back with the DELETE: a write now would be outside
    the budget. Also before the writer's first chunk reached the store (Redis
    buffers a chunk's worth)."""
    from asyncwsgi.stores.base import BodyRemoved

    store = store_factory(max_stored_bytes=4 * MIB)
    record = new_record()
    assert store.create(record)
    assert store.start(record.id, time.time() + 30)
    sink = store.open_sink(record.id, "result")
    sink.reserve(2 * MIB)
    sink.write(DATA[:written])
    assert store.delete(record.id)
    assert stored(store) == 0
    with pytest.raises(BodyRemoved):
        sink.write(DATA[written : written + 2 * MIB - written])  # past a Redis chunk
    sink.discard()
    assert stored(store) == 0
    assert store.create(new_record(), room=4 * MIB)  # the whole budget is free


def test_a_sqlite_body_is_on_disk_before_its_record_names_it(tmp_path, monkeypatch):
    from asyncwsgi.stores import SQLiteStore

    store = SQLiteStore(str(tmp_path / "tasks.db"))
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    try:
        record = new_record()
        assert store.create(record)
        writer = spool(store, record.id, "result")
        monkeypatch.setattr(os, "fsync", fsync)
        body = writer.result()
        monkeypatch.undo()
        results = str(tmp_path / "tasks.db-results")
        assert synced == [os.path.join(results, f"{record.id}.result"), results]
        assert store.finish(record.id, Result("200 OK", [], body))
        writer.close()
    finally:
        store.close()


def test_a_sqlite_store_opening_removes_what_a_crashed_writer_left(tmp_path):
    db = tmp_path / "tasks.db"
    code = (
        "import os\n"
        "from asyncwsgi.stores import SQLiteStore\n"
        f"store = SQLiteStore({str(db)!r})\n"
        "sink = store.open_sink('t' * 32, 'result')\n"
        "sink.write(b'x' * 300000)\n"
        "os._exit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-c", code], check=False, env=env, timeout=60)
    results = tmp_path / "tasks.db-results"
    assert os.listdir(results) == ["t" * 32 + ".result"]
    from asyncwsgi.stores import SQLiteStore

    store = SQLiteStore(str(db))
    try:
        assert os.listdir(results) == []
        assert store.stored_bytes == 0
    finally:
        store.close()


def test_a_sqlite_sweep_keeps_a_body_a_live_writer_holds(tmp_path):
    from asyncwsgi.stores import SQLiteStore

    db = str(tmp_path / "tasks.db")
    store = SQLiteStore(db)
    other = SQLiteStore(db)
    try:
        writer = spool(store, "w" * 32, "request")  # no task yet: being uploaded
        assert other.sweep() == 0
        body = writer.result()
        assert store.create(new_record_with_id("w" * 32))
        writer.close()
        assert other.sweep() == 0  # now its task claims it
        assert read_all(body) == DATA
    finally:
        store.close()
        other.close()


def new_record_with_id(task_id: str):
    record = new_record()
    record.id = task_id
    return record


def test_a_redis_writer_that_died_gives_its_bytes_back(request):
    from asyncwsgi.stores.redis import RedisStore

    store = RedisStore.from_url(
        request.getfixturevalue("redis_url"), prefix="bodies-test:", spool_ttl=0.2
    )
    try:
        writer = spool(store, "d" * 32, "result")
        assert store.stored_bytes == 3 * MIB  # the whole chunks written so far
        del writer  # its process died: no discard, no finish
        time.sleep(0.3)
        assert store.stored_bytes == 0
        assert store.client.keys("bodies-test:body:*") == []
    finally:
        store.close()


def test_results_dir_and_max_stored_bytes_reach_a_store_opened_from_a_url(tmp_path):
    from werkzeug.test import Client

    from asyncwsgi import AsyncMiddleware

    from .helpers import wait_done

    def app(environ, start_response):
        start_response("200 OK", [])
        return [DATA]

    results = tmp_path / "bodies"
    mw = AsyncMiddleware(
        app,
        paths=["/work/*"],
        store=f"sqlite:///{tmp_path}/tasks.db",
        results_dir=str(results),
        max_stored_bytes=64 * MIB,
        max_result=64 * MIB,
        spool_threshold=MIB,
    )
    try:
        assert mw.store.max_stored_bytes == mw.max_stored_bytes == 64 * MIB
        client = Client(mw)
        location = client.post("/work/1").headers["Location"]
        assert wait_done(client, location, buffered=True).data == DATA
        assert os.listdir(results) == [location.rsplit("/", 1)[1] + ".result"]
    finally:
        mw.close(10)
