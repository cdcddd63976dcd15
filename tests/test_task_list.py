"""The task list: ``GET`` on the status prefix itself, for every store."""

# ruff: noqa: F811 (the contract suite's fixtures, imported by name)

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.owner import by_header
from tests.helpers import wait_done
from tests.test_store_contract import StoreFactory, store_factory  # noqa: F401


def quick(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def page_all(client: Client, query: str, user: str, limit: int) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    cursor = None
    while True:
        url = f"/status/?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(url, headers={"X-User": user})
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
        page = response.get_json()
        assert set(page) == {"tasks", "next"}
        assert len(page["tasks"]) <= limit
        tasks += page["tasks"]
        cursor = page["next"]
        if cursor is None:
            return tasks


@pytest.mark.slow
def test_pages_cover_every_task_once_and_owners_never_mix(
    store_factory: StoreFactory, wrap: Any
) -> None:
    # (store_factory first: its stores are closed after the middlewares, whose
    # workers may still be using them until they are closed.)
    app = wrap(quick, store=store_factory(), owner=by_header("X-User"), max_pending=5000)
    client = Client(app)
    mine, theirs = [], []
    for i in range(1000):
        response = client.post("/work/x", headers={"X-User": "ann"})
        assert response.status_code == 202
        mine.append(response.headers["Location"])
        if i % 20 == 0:
            response = client.post("/work/y", headers={"X-User": "bob"})
            theirs.append(response.headers["Location"])
    wait_done(client, mine[-1], headers={"X-User": "ann"})
    listed = page_all(client, "", "ann", 37)
    urls = [task["status_url"] for task in listed]
    assert len(urls) == 1000
    assert set(urls) == set(mine)
    # Newest first.
    created = [task["created"] for task in listed]
    assert created == sorted(created, reverse=True)
    assert set(task["status_url"] for task in page_all(client, "", "bob", 500)) == set(theirs)
    # A page of a fresh list is 50 by default.
    assert len(client.get("/status/", headers={"X-User": "ann"}).get_json()["tasks"]) == 50


def test_fields_state_filter_and_limits(store_factory: StoreFactory, wrap: Any) -> None:
    release = threading.Event()

    def gated(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/work/slow":
            environ["asyncwsgi.task"].set_progress(1, 2, "half")
            release.wait(30)
        start_response("203 Non-Authoritative Information", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = wrap(gated, store=store_factory(), owner=by_header("X-User"), max_workers=1)
    client = Client(app)
    user = {"X-User": "ann"}
    done = client.post("/work/quick", headers=user).headers["Location"]
    wait_done(client, done, headers=user)
    running = client.post("/work/slow", headers=user).headers["Location"]
    queued = client.post("/work/quick", headers=user).headers["Location"]
    try:
        deadline = time.monotonic() + 10
        while client.get(running, headers=user).get_json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)
        by_state = {
            state: [task["status_url"] for task in page_all(client, f"&state={state}", "ann", 10)]
            for state in ("queued", "running", "done")
        }
        assert by_state == {"queued": [queued], "running": [running], "done": [done]}
        listed = {task["status_url"]: task for task in page_all(client, "", "ann", 10)}
        assert list(listed) == [queued, running, done]
        for task in listed.values():
            assert set(task) == {
                "id", "state", "status_url", "created", "started", "finished", "progress", "status"
            }  # fmt: skip
            assert task["status_url"].endswith(task["id"])
        assert listed[done]["status"] == 203 and listed[done]["finished"] is not None
        assert listed[running]["status"] is None and listed[running]["finished"] is None
        assert listed[running]["progress"] == {"done": 1, "total": 2, "message": "half"}
        assert listed[running]["started"] is not None
        assert listed[queued]["started"] is None
        # Bad queries are a clear 400.
        bad = ("state=expired", "limit=0", "limit=501", "limit=x", "cursor=%%%", "cursor=abc")
        for query in bad:
            response = client.get("/status/?" + query, headers=user)
            assert response.status_code == 400, query
        assert len(client.get("/status/?limit=500", headers=user).get_json()["tasks"]) == 3
        # HEAD answers the headers alone; other methods are refused.
        head = client.head("/status/", headers=user)
        assert head.status_code == 200 and head.get_data() == b""
        assert client.post("/status/", headers=user).status_code == 405
        assert client.get("/status/", headers={"X-User": "bob"}).get_json() == {
            "tasks": [],
            "next": None,
        }
        assert client.get("/status/").status_code == 403
    finally:
        release.set()


def test_off_without_an_owner_unless_asked(wrap: Any) -> None:
    plain = Client(wrap(quick))
    plain.post("/work/x")
    assert plain.get("/status/").status_code == 404
    listing = Client(wrap(quick, list_tasks=True))
    location = listing.post("/work/x").headers["Location"]
    tasks = listing.get("/status/").get_json()["tasks"]
    assert [task["status_url"] for task in tasks] == [location]
    # An owner turns it on; list_tasks=False turns it off again.
    owned = Client(wrap(quick, owner=by_header("X-User"), list_tasks=False))
    assert owned.get("/status/", headers={"X-User": "ann"}).status_code == 404


def test_the_list_option_is_a_keyword_of_the_same_name() -> None:
    middleware = AsyncMiddleware(quick, paths=["/work"], list_tasks=True)
    try:
        assert middleware.list_tasks is True
    finally:
        middleware.close()
