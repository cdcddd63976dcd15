"""The store side of push: the task list's index, watching a task change, and
claiming completion callbacks, for every store kind of the contract suite."""

# ruff: noqa: F811 (the contract suite's fixtures, imported by name)

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import pytest

from asyncwsgi.stores import Store
from asyncwsgi.task import Callback, TaskRecord
from tests.helpers import Clock
from tests.test_store_contract import (  # noqa: F401 (fixtures)
    StoreFactory,
    new_record,
    ok,
    pass_time,
    run_to_done,
    store,
    store_factory,
)

# -- the task list ------------------------------------------------------------


def _page_through(
    store: Store, owner: str | None, state: str | None = None, limit: int = 37
) -> list[str]:
    seen: list[str] = []
    before: tuple[float, str] | None = None
    while True:
        page = store.list_tasks(owner, state=state, before=before, limit=limit)  # type: ignore[arg-type]
        assert len(page) <= limit
        seen += [record.id for record in page]
        if len(page) < limit:
            return seen
        before = (page[-1].created, page[-1].id)


def test_list_pages_cover_every_task_exactly_once_newest_first(store: Store) -> None:
    base = time.time()
    mine: list[TaskRecord] = []
    for i in range(1000):
        # Every third task shares its creation time with the one before: ties
        # are ordered by id, and a page boundary inside a tie loses nothing.
        record = TaskRecord(f"t{i:04d}", created=base + (i - i % 3 // 2), owner="A")
        assert store.create(record)
        mine.append(record)
        assert store.create(TaskRecord(f"u{i:04d}", created=base + i, owner="B"))
    expected = [r.id for r in sorted(mine, key=lambda r: (r.created, r.id), reverse=True)]
    seen = _page_through(store, "A")
    assert seen == expected
    assert len(set(seen)) == 1000
    assert all(task_id.startswith("u") for task_id in _page_through(store, "B", limit=500))
    assert _page_through(store, None) == []


def test_list_filters_by_state_and_follows_changes(store: Store) -> None:
    records = [new_record(owner="A") for _ in range(6)]
    for record in records:
        assert store.create(record)
    for record in records[:2]:
        assert store.start(record.id, time.time() + 30)
    assert store.start(records[2].id, time.time() + 30)
    assert store.finish(records[2].id, ok())
    assert store.finish(records[3].id, ok())  # done from queued
    ids = {state: set(_page_through(store, "A", state)) for state in ("queued", "running", "done")}
    assert ids == {
        "queued": {records[4].id, records[5].id},
        "running": {records[0].id, records[1].id},
        "done": {records[2].id, records[3].id},
    }
    got = store.list_tasks("A", state="done", limit=10)
    assert {r.result.status for r in got if r.result} == {"200 OK"}
    assert store.delete(records[0].id)
    assert store.delete(records[2].id)
    assert set(_page_through(store, "A")) == {r.id for r in records} - {
        records[0].id,
        records[2].id,
    }
    assert set(_page_through(store, "A", "running")) == {records[1].id}


def test_list_drops_expired_tasks(store: Store, pass_time: Callable[[float], None]) -> None:
    short = new_record(ttl=0.2, owner="A")
    run_to_done(store, short)
    kept = new_record(owner="A")
    assert store.create(kept)
    assert {r.id for r in store.list_tasks("A", limit=10)} == {short.id, kept.id}
    pass_time(0.4)
    assert [r.id for r in store.list_tasks("A", limit=10)] == [kept.id]
    assert store.list_tasks("A", state="done", limit=10) == []


# -- watching a task ----------------------------------------------------------


def test_watch_wakes_on_progress_start_and_finish(store: Store) -> None:
    record = new_record()
    assert store.create(record)
    # A copy: the memory store's records change in place.
    seen = dataclasses.replace(store.get(record.id))  # type: ignore[type-var]

    def later() -> None:
        time.sleep(0.3)
        store.start(record.id, time.time() + 30)
        time.sleep(0.3)
        store.set_progress(record.id, {"done": 1, "total": 2, "message": None})
        time.sleep(0.3)
        store.finish(record.id, ok())

    thread = threading.Thread(target=later)
    thread.start()
    try:
        states = []
        for _ in range(3):
            started = time.monotonic()
            seen = store.watch(record.id, seen, 5.0)
            assert seen is not None
            assert time.monotonic() - started < 1.0  # woken, not timed out
            states.append((seen.state, seen.progress))
        assert states == [
            ("running", None),
            ("running", {"done": 1, "total": 2, "message": None}),
            ("done", {"done": 1, "total": 2, "message": None}),
        ]
    finally:
        thread.join()


def test_watch_times_out_without_change(store: Store) -> None:
    record = new_record()
    assert store.create(record)
    seen = store.get(record.id)
    started = time.monotonic()
    got = store.watch(record.id, seen, 0.3)
    assert got is not None and got.state == "queued"
    assert 0.25 < time.monotonic() - started < 2.0


# -- completion callbacks -----------------------------------------------------


def _with_callback(url: str = "http://127.0.0.1:1/hook") -> TaskRecord:
    record = new_record(ttl=60)
    record.callback = Callback(url, "/status/" + record.id)
    return record


def test_a_finished_task_with_a_callback_is_claimed_once(store: Store, clock: Clock) -> None:
    plain = new_record()
    run_to_done(store, plain)
    record = _with_callback()
    run_to_done(store, record)
    now = clock()
    claimed = store.claim_callbacks(now, 30, 10)
    assert len(claimed) == 1
    delivery = claimed[0]
    assert delivery.task_id == record.id
    assert delivery.url == "http://127.0.0.1:1/hook"
    assert delivery.status_url == "/status/" + record.id
    assert delivery.status == 200 and delivery.attempts == 0
    assert delivery.finished == pytest.approx(now, abs=5)
    assert delivery.deadline == pytest.approx(delivery.finished + 60, abs=1)
    # Claimed: nobody else gets it while the claim holds.
    assert store.claim_callbacks(clock(), 30, 10) == []
    # A failure brings it back at the retry time, one attempt counted.
    assert store.settle_callback(delivery, clock() + 0.2)
    assert not store.settle_callback(delivery, None)  # that claim is spent
    assert store.claim_callbacks(clock(), 30, 10) == []
    clock.advance(0.3)
    again = store.claim_callbacks(clock(), 30, 10)
    assert [(d.task_id, d.attempts) for d in again] == [(record.id, 1)]
    assert store.settle_callback(again[0], None)
    assert store.claim_callbacks(clock() + 3600, 30, 10) == []
    assert record.callback is not None
    got = store.get(record.id)
    assert got is not None and got.callback == record.callback


def test_a_lapsed_claim_is_taken_over_and_the_old_one_cannot_settle(
    store: Store, clock: Clock
) -> None:
    record = _with_callback()
    run_to_done(store, record)
    first = store.claim_callbacks(clock(), 0.2, 10)
    assert len(first) == 1
    clock.advance(0.3)
    second = store.claim_callbacks(clock(), 30, 10)
    assert len(second) == 1
    assert not store.settle_callback(first[0], None)
    assert store.settle_callback(second[0], None)


def test_lost_and_deleted_tasks(store: Store) -> None:
    # A task ended as lost still calls back (with its verdict); one deleted before
    # it finished never does.
    lost = _with_callback()
    lost.lease_until = time.time() - 1
    assert store.create(lost)
    got = store.get(lost.id)
    assert got is not None and got.state == "done"
    deleted = _with_callback()
    assert store.create(deleted)
    assert store.delete(deleted.id)
    assert not store.finish(deleted.id, ok())
    claimed = store.claim_callbacks(time.time(), 30, 10)
    assert got.result is not None  # its verdict: 503 never started (500 once it had)
    assert [(d.task_id, d.status) for d in claimed] == [(lost.id, got.result.code)]


def test_concurrent_claimers_never_share_a_delivery(store_factory: StoreFactory) -> None:
    store = store_factory()
    for _ in range(40):
        run_to_done(store, _with_callback())
    others = [store_factory() for _ in range(3)]
    claimed: list[str] = []
    lock = threading.Lock()

    def claim(each: Store) -> None:
        for _ in range(20):
            got = each.claim_callbacks(time.time(), 30, 3)
            with lock:
                claimed.extend(d.task_id for d in got)

    threads = [threading.Thread(target=claim, args=(each,)) for each in [store, *others]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 40
    assert len(set(claimed)) == 40
