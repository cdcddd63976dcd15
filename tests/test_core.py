"""The core: a marked request becomes a task, answered 202, then replayed."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import MemoryStore
from asyncwsgi.stores.sqlite import SQLiteStore

from .helpers import wait_done


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response(
        "201 Created",
        [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
    )
    return [environ["REQUEST_METHOD"].encode(), b":", body]


@pytest.fixture
def gate() -> threading.Event:
    return threading.Event()


def test_marked_post_is_answered_202_then_replayed_exactly(wrap):
    client = Client(wrap(echo))
    submitted = client.post("/work/1", data=b"payload")
    assert submitted.status_code == 202
    assert submitted.headers["Content-Type"] == "application/json"
    assert submitted.headers["Retry-After"] == "1"
    location = submitted.headers["Location"]
    assert re.fullmatch(r"/status/[A-Za-z0-9_-]{32}", location)
    document = submitted.json
    assert document["status_url"] == location
    assert document["state"] in ("queued", "running", "done")
    assert {"id", "state", "status_url", "created"} <= set(document)

    done = wait_done(client, location)
    assert done.status == "201 Created"
    assert done.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert done.data == b"POST:payload"
    assert "Preference-Applied" not in done.headers and "Vary" not in done.headers
    # served again on every poll until the TTL
    assert client.get(location).data == b"POST:payload"


def test_unmarked_paths_and_head_options_go_straight_to_the_app(wrap):
    seen: list[Any] = []

    def app(environ, start_response):
        seen.append((environ["REQUEST_METHOD"], start_response))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"direct"]

    mw = wrap(app)
    sentinel_calls = []

    def start_response(status, headers, exc_info=None):
        sentinel_calls.append(status)
        return lambda data: None

    for method, path in [("GET", "/other"), ("HEAD", "/work/1"), ("OPTIONS", "/work/1")]:
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path}
        assert mw(environ, start_response) == [b"direct"]
        # nothing wrapped: the app got the server's very start_response
        assert seen[-1] == (method, start_response)


def test_mount_under_script_name_gives_location_with_it(wrap):
    client = Client(wrap(echo))
    api = "http://localhost/api"
    submitted = client.post("/work/1", data=b"x", base_url=api)
    location = submitted.headers["Location"]
    assert location.startswith("/api/status/")
    done = wait_done(client, location.removeprefix("/api"), base_url=api)
    assert done.data == b"POST:x"


@pytest.mark.parametrize(
    "pattern, path, marked",
    [
        pytest.param("/export", "/export", True, id="exact"),
        pytest.param("/export", "/export/1", False, id="exact-not-prefix"),
        pytest.param("/reports/*", "/reports/a/b", True, id="glob-crosses-slash"),
        pytest.param("/reports/*", "/report", False, id="glob-miss"),
        pytest.param("/export/<int:id>", "/export/12", True, id="rule-int"),
        pytest.param("/export/<int:id>", "/export/abc", False, id="rule-int-rejects"),
        pytest.param(re.compile(r"/jobs/\d+"), "/jobs/42", True, id="regex"),
        pytest.param(re.compile(r"/jobs/\d+"), "/jobs/42x", False, id="regex-fullmatch"),
    ],
)
def test_path_patterns(wrap, pattern, path, marked):
    client = Client(wrap(echo, paths=[pattern]))
    response = client.post(path, data=b"")
    assert (response.status_code == 202) is marked


def test_hundred_patterns_compile_into_one_matcher():
    from asyncwsgi.patterns import compile_patterns

    patterns = [f"/p{i}/*" for i in range(50)] + [f"/r{i}/<int:x>" for i in range(50)]
    match = compile_patterns(patterns)
    assert match("/p49/a", "POST") and match("/r7/3", "POST")
    assert not match("/r7/x", "POST") and not match("/nothing", "GET")


def test_methods_option_limits_what_becomes_a_task(wrap):
    client = Client(wrap(echo, methods=["POST"]))
    assert client.post("/work/1").status_code == 202
    assert client.put("/work/1").status_code == 201


def test_app_sees_copied_environ(wrap):
    seen: dict[str, Any] = {}
    marker = object()

    def app(environ, start_response):
        seen.update(environ)
        seen["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return []

    client = Client(wrap(app))
    response = client.post(
        "/work/1?q=1",
        data=b"abc",
        headers={"X-Thing": "yes"},
        environ_base={"outer.object": marker, "gunicorn.socket": object()},
    )
    wait_done(client, response.headers["Location"])
    assert seen["body"] == b"abc" and seen["CONTENT_LENGTH"] == "3"
    assert seen["QUERY_STRING"] == "q=1" and seen["HTTP_X_THING"] == "yes"
    assert seen["wsgi.multithread"] is True and seen["wsgi.run_once"] is False
    assert seen["outer.object"] is marker
    assert "gunicorn.socket" not in seen
    assert seen["asyncwsgi.task"].id == response.json["id"]


def test_content_length_stays_absent_when_request_had_none(wrap):
    seen: dict[str, Any] = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [])
        return []

    mw = wrap(app)
    client = Client(mw)
    response = client.get("/work/1")
    wait_done(client, response.headers["Location"])
    assert "CONTENT_LENGTH" not in seen


def test_progress_is_shown_in_status_json(wrap, gate):
    def app(environ, start_response):
        environ["asyncwsgi.task"].set_progress(3, 10, "step 3")
        gate.wait(5)
        start_response("200 OK", [])
        return [b"ok"]

    client = Client(wrap(app))
    location = client.post("/work/1").headers["Location"]
    deadline = time.monotonic() + 5
    while True:
        status = client.get(location).json
        if status["progress"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert status["state"] == "running"
    assert status["progress"] == {"done": 3, "total": 10, "message": "step 3"}
    assert status["started"] is not None
    gate.set()
    assert wait_done(client, location).data == b"ok"


def test_head_on_status_gives_headers_without_body(wrap):
    client = Client(wrap(echo))
    location = client.post("/work/1", data=b"x").headers["Location"]
    wait_done(client, location)
    head = client.head(location)
    assert head.status_code == 201 and head.data == b""
    assert head.headers.getlist("Set-Cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "OPTIONS"])
def test_other_methods_on_status_url_are_405_with_allow(wrap, method):
    client = Client(wrap(echo))
    location = client.post("/work/1").headers["Location"]
    response = client.open(location, method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD, DELETE"


@pytest.mark.parametrize(
    "suffix",
    [
        pytest.param("A" * 32, id="unknown"),
        pytest.param("short", id="too-short"),
        pytest.param("A" * 31 + "!", id="bad-alphabet"),
        pytest.param("A" * 32 + "/x", id="extra-segment"),
    ],
)
def test_unknown_or_malformed_ids_are_404(wrap, suffix):
    calls: list[str] = []
    store = MemoryStore()
    original_get = store.get

    def spy_get(task_id: str):
        calls.append(task_id)
        return original_get(task_id)

    store.get = spy_get  # type: ignore[method-assign]
    client = Client(wrap(echo, store=store))
    assert client.get("/status/" + suffix).status_code == 404
    if len(suffix) != 32:
        assert calls == []  # malformed ids never reach the store


def test_delete_queued_task_never_runs(wrap, gate):
    ran: list[str] = []

    def app(environ, start_response):
        ran.append(environ["PATH_INFO"])
        gate.wait(5)
        start_response("200 OK", [])
        return [b""]

    client = Client(wrap(app, max_workers=1))
    first = client.post("/work/first").headers["Location"]
    second = client.post("/work/second").headers["Location"]
    assert client.delete(second).status_code == 204
    assert client.get(second).status_code == 404
    gate.set()
    wait_done(client, first)
    time.sleep(0.1)
    assert ran == ["/work/first"]


def test_delete_running_task_sets_cancelled_and_drops_result(wrap):
    started = threading.Event()
    observed: list[bool] = []

    def app(environ, start_response):
        task = environ["asyncwsgi.task"]
        started.set()
        deadline = time.monotonic() + 5
        while not task.cancelled and time.monotonic() < deadline:
            time.sleep(0.005)
        observed.append(task.cancelled)
        start_response("200 OK", [])
        return [b"late"]

    mw = wrap(app)
    client = Client(mw)
    location = client.post("/work/1").headers["Location"]
    assert started.wait(5)
    assert client.delete(location).status_code == 204
    mw.close(timeout=5)
    assert observed == [True]
    assert client.get(location).status_code == 404


def test_body_over_max_body_is_413_and_no_task(wrap):
    mw = wrap(echo, max_body=10)
    client = Client(mw)
    assert client.post("/work/1", data=b"x" * 11).status_code == 413
    assert mw.store.count_active() == 0
    assert client.post("/work/1", data=b"x" * 10).status_code == 202


@pytest.mark.parametrize("length", ["abc", "-1", "1e3"])
def test_bad_content_length_is_400(wrap, length):
    client = Client(wrap(echo))
    response = client.post("/work/1", data=b"abc", environ_overrides={"CONTENT_LENGTH": length})
    assert response.status_code == 400


def test_max_pending_gives_503_then_recovers(wrap, gate):
    def app(environ, start_response):
        gate.wait(5)
        start_response("200 OK", [])
        return [b"ok"]

    mw = wrap(app, max_workers=1, max_pending=2)
    client = Client(mw)
    locations = [client.post("/work/1").headers["Location"] for _ in range(2)]
    refused = client.post("/work/1")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert mw.store.count_active() == 2
    gate.set()
    for location in locations:
        assert wait_done(client, location).data == b"ok"
    assert client.post("/work/1").status_code == 202


def test_result_expires_to_410_then_404(wrap, clock):
    store = MemoryStore(max_tombstones=1)
    store.clock = clock
    client = Client(wrap(echo, store=store, result_ttl=0.2))
    first = client.post("/work/1").headers["Location"]
    wait_done(client, first)
    clock.advance(0.3)
    assert client.get(first).status_code == 410
    second = client.post("/work/2").headers["Location"]
    wait_done(client, second)
    clock.advance(0.3)
    assert client.get(second).status_code == 410
    assert client.get(first).status_code == 404  # its tombstone was pushed out


def test_close_drains_queued_and_running_tasks_and_refuses_new(wrap):
    def app(environ, start_response):
        time.sleep(0.05)
        start_response("200 OK", [])
        return [environ["PATH_INFO"].encode()]

    mw = wrap(app, max_workers=2)
    client = Client(mw)
    locations = [client.post(f"/work/{i}").headers["Location"] for i in range(10)]
    assert mw.close() is True
    assert client.post("/work/x").status_code == 503
    bodies = [client.get(location).data for location in locations]
    assert bodies == [f"/work/{i}".encode() for i in range(10)]


def test_close_with_timeout_ends_unfinished_tasks_explicitly(wrap, gate):
    entered = threading.Event()

    def app(environ, start_response):
        entered.set()
        gate.wait(5)
        start_response("200 OK", [])
        return [b"ok"]

    mw = wrap(app, max_workers=1)
    client = Client(mw)
    running = client.post("/work/1").headers["Location"]
    queued = client.post("/work/2").headers["Location"]
    assert entered.wait(5)  # the first runs, the second waits in the queue
    assert mw.close(timeout=0.1) is False
    assert client.get(running).status_code == 500
    assert client.get(queued).status_code == 503
    gate.set()


class SlowHeartbeatStore(SQLiteStore):
    """A shared store whose heartbeats take a while and are logged."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.began: list[float] = []
        self.beats: list[tuple[float, float]] = []

    def heartbeat(self, task_ids: list[str], lease_until: float) -> None:
        began = time.monotonic()
        self.began.append(began)
        time.sleep(0.2)
        super().heartbeat(task_ids, lease_until)
        self.beats.append((began, time.monotonic()))


def test_after_close_no_thread_of_the_middleware_touches_the_store(wrap, gate, tmp_path):
    def app(environ, start_response):
        gate.wait(5)
        start_response("200 OK", [])
        return [b"ok"]

    store = SlowHeartbeatStore(str(tmp_path / "tasks.db"))
    mw = wrap(app, store=store, lease=0.15)  # a heartbeat every 0.05 s
    location = Client(mw).post("/work/1").headers["Location"]
    deadline = time.monotonic() + 5
    while len(store.began) < 2:  # the second heartbeat is under way
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.01)
    gate.set()
    assert mw.close() is True
    closed = time.monotonic()
    time.sleep(0.4)
    assert all(ended <= closed for _, ended in store.beats), (closed, store.beats[-3:])
    assert not [t for t in threading.enumerate() if t.name.startswith("asyncwsgi-heartbeat")]
    assert Client(mw).get(location).status_code == 200  # results stay readable
    store.close()  # safe now: nothing of the middleware runs any more


def test_multiprocess_server_with_memory_store_warns_once(wrap, caplog):
    client = Client(wrap(echo))
    for _ in range(3):
        client.post("/work/1", environ_overrides={"wsgi.multiprocess": True})
    warnings = [r for r in caplog.records if "shared store" in r.getMessage()]
    assert len(warnings) == 1


def test_status_json_is_valid_json_with_documented_fields(wrap, gate):
    def app(environ, start_response):
        gate.wait(5)
        start_response("200 OK", [])
        return []

    client = Client(wrap(app))
    response = client.post("/work/1")
    status = json.loads(client.get(response.headers["Location"]).data)
    assert set(status) == {"id", "state", "status_url", "created", "started", "progress"}
    gate.set()
