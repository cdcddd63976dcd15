"""Server-Sent Events on the status URL, through real servers: werkzeug's in a
thread, and gunicorn with two workers on a shared store (SQLite, Redis) where
the stream is served by the process that does not run the task."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from asyncwsgi.owner import by_header
from tests.helpers import serving
from tests.test_gunicorn_shared import gunicorn, store_url  # noqa: F401 (fixture)

EVENTS = "text/event-stream"


@dataclass
class Event:
    name: str
    id: str | None
    data: Any


class Stream:
    """One SSE response read on its own connection."""

    def __init__(self, base: str, path: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        self.conn.request("GET", path, headers={"Accept": EVENTS, **(headers or {})})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = dict(self.response.getheaders())
        self.retry: int | None = None

    def events(self) -> Iterator[Event]:
        """The events as they come, until the server ends the stream."""
        name, ident, data = "message", None, []
        while True:
            line = self.response.readline()
            if not line:
                return
            text = line.decode().rstrip("\n")
            if text == "":
                if data:
                    yield Event(name, ident, json.loads("\n".join(data)))
                name, ident, data = "message", None, []
            elif text.startswith(":"):
                continue
            else:
                field, _, value = text.partition(": ")
                if field == "event":
                    name = value
                elif field == "id":
                    ident = value
                elif field == "data":
                    data.append(value)
                elif field == "retry":
                    self.retry = int(value)

    def close(self) -> None:
        self.conn.close()


def submit(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """POST ``path``; the status URL and the pid of the worker that answered."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("POST", path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        response.read()
        assert response.status == 202, response.status
        return response.getheader("Location") or "", response.getheader("X-Pid") or ""
    finally:
        conn.close()


class Gate:
    """An app whose task reports progress one step each time the test says so."""

    def __init__(self) -> None:
        self.step = threading.Semaphore(0)
        self.started = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        task = environ["asyncwsgi.task"]
        self.started.set()
        for done in range(1, 4):
            assert self.step.acquire(timeout=30)
            task.set_progress(done, 3, f"step {done}")
        assert self.step.acquire(timeout=30)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made"]


@pytest.fixture
def gated(wrap: Any) -> Iterator[tuple[str, Gate]]:
    gate = Gate()
    app = wrap(gate, owner=by_header("X-User"), max_wait=5)
    with serving(app) as base:
        yield base, gate


def test_progress_events_then_done(gated: tuple[str, Gate]) -> None:
    base, gate = gated
    location, _ = submit(base, "/work/x", {"X-User": "ann"})
    stream = Stream(base, location, {"X-User": "ann"})
    try:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == EVENTS
        assert stream.headers["Cache-Control"] == "no-cache"
        seen = []
        for event in stream.events():
            seen.append(event)
            if event.name == "progress":
                gate.step.release()  # the next change only after this one was seen
        assert stream.retry == 1000
    finally:
        stream.close()
    names = [event.name for event in seen]
    assert names[-1] == "done"
    assert seen[-1].data == {"status": 201, "location": location}
    assert seen[-1].id == "done"
    progress = [event.data["progress"] for event in seen if event.name == "progress"]
    assert [p["done"] for p in progress if p] == [1, 2, 3]
    # Each progress event is the 202's JSON document, with an id of its own.
    for event in seen[:-1]:
        assert event.data["id"] == location.rsplit("/", 1)[1]
        assert event.data["status_url"] == location
        assert event.data["state"] in ("queued", "running")
    ids = [event.id for event in seen]
    assert len(set(ids)) == len(ids)


def test_owner_binding_and_plain_polls(gated: tuple[str, Gate]) -> None:
    base, gate = gated
    location, _ = submit(base, "/work/x", {"X-User": "ann"})
    for headers in ({"X-User": "bob"}, {}):
        stream = Stream(base, location, headers)
        try:
            assert stream.status == 404
        finally:
            stream.close()
    parts = urlsplit(base)
    # HEAD, and a GET that does not ask for events (*/* too), are polls as before.
    for method, accept in (("HEAD", EVENTS), ("GET", "*/*"), ("GET", "application/json")):
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            conn.request(method, location, headers={"Accept": accept, "X-User": "ann"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 202
            assert response.getheader("Content-Type") == "application/json"
            if method == "GET":
                assert json.loads(body)["status_url"] == location
        finally:
            conn.close()
    for _ in range(4):
        gate.step.release()


def test_reconnect_with_last_event_id_does_not_replay(gated: tuple[str, Gate]) -> None:
    base, gate = gated
    location, _ = submit(base, "/work/x", {"X-User": "ann"})
    assert gate.started.wait(10)
    gate.step.release()
    time.sleep(0.3)
    first = Stream(base, location, {"X-User": "ann"})
    events = first.events()
    seen = next(events)
    assert seen.data["progress"]["done"] == 1
    first.close()
    # Nothing new since: the reconnect waits for the next change, then sends it.
    again = Stream(base, location, {"X-User": "ann", "Last-Event-ID": seen.id or ""})
    try:
        events = again.events()
        threading.Timer(0.5, gate.step.release).start()
        started = time.monotonic()
        following = next(events)
        assert time.monotonic() - started > 0.3
        assert following.data["progress"]["done"] == 2
        assert following.id != seen.id
    finally:
        again.close()
    gate.step.release()
    gate.step.release()
    # Seen to the end: 204, which stops an EventSource for good.
    deadline = time.monotonic() + 10
    while True:
        last = Stream(base, location, {"X-User": "ann"})
        tail = [event.name for event in last.events()]
        last.close()
        if tail == ["done"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    finished = Stream(base, location, {"X-User": "ann", "Last-Event-ID": "done"})
    try:
        assert finished.status == 204
    finally:
        finished.close()


def test_stream_ends_at_max_wait(wrap: Any) -> None:
    gate = Gate()
    app = wrap(gate, max_wait=1.0)
    with serving(app) as base:
        location, _ = submit(base, "/work/x")
        stream = Stream(base, location)
        try:
            started = time.monotonic()
            names = [event.name for event in stream.events()]
            took = time.monotonic() - started
        finally:
            stream.close()
        assert names == ["progress"]
        assert 0.9 < took < 3.0
        for _ in range(4):
            gate.step.release()


def test_unknown_and_done_tasks(wrap: Any) -> None:
    def quick(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = wrap(quick)
    with serving(app) as base:
        stream = Stream(base, "/status/" + "x" * 32)
        assert stream.status == 404
        stream.close()
        location, _ = submit(base, "/work/x")
        time.sleep(0.3)
        stream = Stream(base, location)
        try:
            assert [(event.name, event.data) for event in stream.events()] == [
                ("done", {"status": 200, "location": location})
            ]
        finally:
            stream.close()


# -- two gunicorn workers on a shared store -----------------------------------


@pytest.mark.slow
def test_stream_from_the_other_worker(tmp_path: Path, store_url: str) -> None:  # noqa: F811
    # Sync workers: one request at a time each, so while a stream holds the
    # worker that runs the task, the next connection goes to the other one.
    with gunicorn(tmp_path, store_url, ["-w", "2"], app="tests.apps.push_app:application") as (
        port,
        _process,
    ):
        base = f"http://127.0.0.1:{port}"
        for _ in range(3):
            location, runner_pid = submit(base, "/work/steps?n=8&ms=400")
            held: list[Stream] = []
            try:
                for _attempt in range(10):
                    stream = Stream(base, location)
                    if stream.headers.get("X-Pid") != runner_pid:
                        break
                    held.append(stream)
                else:
                    pytest.fail("every stream landed on the worker running the task")
                try:
                    assert stream.status == 200
                    seen = list(stream.events())
                finally:
                    stream.close()
            finally:
                for other in held:
                    other.close()
            progress = [e.data["progress"] for e in seen if e.name == "progress"]
            done = [p["done"] for p in progress if p]
            assert len(done) >= 3, seen  # live progress, not just the end
            assert done == sorted(done)
            assert all(p["message"] == f"pid={runner_pid}" for p in progress if p)
            assert seen[-1].name == "done"
            assert seen[-1].data == {"status": 200, "location": location}


def test_streams_count_against_the_waiting_bound(wrap: Any) -> None:
    gate = Gate()
    app = wrap(gate, max_wait=3.0, max_waiting=1)
    with serving(app) as base:
        location, _ = submit(base, "/work/x")
        first = Stream(base, location)
        try:
            events = first.events()
            assert next(events).name == "progress"  # holds the one slot
            # No slot left: the current state at once, then the stream ends,
            # and EventSource comes back after ``retry`` (a poll, in effect).
            started = time.monotonic()
            second = Stream(base, location)
            assert [event.name for event in second.events()] == ["progress"]
            second.close()
            assert time.monotonic() - started < 1.0
        finally:
            first.close()
        # The first stream's slot is free again once the server closed it.
        deadline = time.monotonic() + 5
        while True:
            third = Stream(base, location)
            started = time.monotonic()
            names = [event.name for event in third.events()]
            third.close()
            if time.monotonic() - started > 2.5:
                break  # held to max_wait: it had the slot
            assert time.monotonic() < deadline, names
            time.sleep(0.2)
        for _ in range(4):
            gate.step.release()
