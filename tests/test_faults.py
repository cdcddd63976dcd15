"""Faults the app can throw at the middleware: hangs, leaks, hostile requests."""

from __future__ import annotations

import io
import threading
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client, create_environ

from asyncwsgi import AsyncMiddleware

from .helpers import wait_done


def test_app_that_blocks_forever_ends_as_504_and_threads_stay_bounded(caplog):
    release = threading.Event()

    def hang(environ, start_response):
        release.wait(30)
        start_response("200 OK", [])
        return [b"too late"]

    mw = AsyncMiddleware(hang, paths=["/work/*"], max_workers=2, timeout=0.3)
    try:
        client = Client(mw)
        before = threading.active_count()
        locations = [client.post("/work/x").headers["Location"] for _ in range(6)]
        for location in locations:
            done = wait_done(client, location, timeout=5)
            assert done.status_code == 504  # running and queued ones alike
        # two stuck pool threads plus the watchdog, however many tasks
        assert threading.active_count() <= before + 2 + 1
        assert any("timeout" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
        mw.close(timeout=5)
    assert client.get(locations[0]).status_code == 504  # the late result is dropped


def test_fast_tasks_are_unaffected_by_timeout():
    def quick(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    mw = AsyncMiddleware(quick, paths=["/work/*"], timeout=5)
    try:
        client = Client(mw)
        assert wait_done(client, client.post("/work/1").headers["Location"]).data == b"ok"
    finally:
        mw.close(timeout=5)


def echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


_text = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=40)


@pytest.fixture(scope="module")
def fuzz_target():
    mw = AsyncMiddleware(
        echo,
        paths=["/work/*", "/export/<int:id>"],
        prefer_paths=["/maybe"],
        max_wait=0.01,
        max_body=64,
    )
    yield mw
    mw.close(timeout=10)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW"]),
    path=st.one_of(
        st.sampled_from(["/work/a", "/export/7", "/maybe", "/status/", "/status/" + "A" * 32]),
        _text.map(lambda t: "/" + t),
        _text.map(lambda t: "/status/" + t),
    ),
    script_name=st.sampled_from(["", "/mount", "/a/b"]),
    prefer=st.one_of(st.none(), _text, st.sampled_from(["wait=0", "respond-async, wait=1"])),
    key=st.one_of(st.none(), _text),
    content_length=st.one_of(
        st.none(), st.sampled_from(["-1", "abc", "99999999999", "3", "1e2", " 5", ""]), _text
    ),
    body=st.binary(max_size=80),
    chunked=st.booleans(),
)
def test_hostile_requests_get_a_clean_answer(
    fuzz_target, method, path, script_name, prefer, key, content_length, body, chunked
):
    overrides: dict[str, Any] = {"REQUEST_METHOD": method, "SCRIPT_NAME": script_name}
    overrides["PATH_INFO"] = path
    if prefer is not None:
        overrides["HTTP_PREFER"] = prefer
    if key is not None:
        overrides["HTTP_IDEMPOTENCY_KEY"] = key
    if content_length is not None:
        overrides["CONTENT_LENGTH"] = content_length
    if chunked:
        overrides["HTTP_TRANSFER_ENCODING"] = "chunked"
    client = Client(fuzz_target)
    response = client.open("/", data=body, environ_overrides=overrides)
    assert response.status_code in (200, 202, 204, 400, 404, 405, 409, 410, 411, 413, 422, 503)
    assert b"Traceback" not in response.data


def test_logs_carry_no_bodies_and_no_auth_headers(caplog):
    def failing(environ, start_response):
        environ["wsgi.input"].read()
        raise RuntimeError("the app failed")

    mw = AsyncMiddleware(failing, paths=["/work/*"], owner=lambda e: e.get("HTTP_AUTHORIZATION"))
    try:
        client = Client(mw)
        location = client.post(
            "/work/1", data=b"secret-body-bytes", headers={"Authorization": "Bearer s3cr3t"}
        ).headers["Location"]
        assert (
            wait_done(client, location, headers={"Authorization": "Bearer s3cr3t"}).status_code
            == 500
        )
    finally:
        mw.close(timeout=5)
    logged = caplog.text
    assert "the app failed" in logged  # the fault itself is logged, with its traceback
    assert "secret-body-bytes" not in logged and "s3cr3t" not in logged


def test_the_middleware_keeps_nothing_per_finished_task():
    import gc
    import tracemalloc

    from asyncwsgi import MemoryStore

    def app(environ, start_response):
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"x" * 100]

    # Results expire at once and tombstones are capped, so whatever stays
    # behind per task would be the middleware's own leak.
    mw = AsyncMiddleware(
        app, paths=["/work/*"], result_ttl=0.0, store=MemoryStore(max_tombstones=10)
    )
    try:
        # The middleware is called straight from a prepared environ: the test
        # client costs far more per request than the middleware (8,000
        # requests under tracemalloc), and what counts here is the package's.
        post = create_environ("/work/1", method="POST", data=b"b" * 1000)
        plain = create_environ("/")
        long_poll = create_environ("/", headers={"Prefer": "wait=10"})

        def call(environ: dict[str, Any]) -> tuple[str, dict[str, str]]:
            answer: list[Any] = []
            body = mw(
                environ,
                lambda status, headers, exc_info=None: answer.extend((status, dict(headers))),
            )
            try:
                for _ in body:
                    pass
            finally:
                getattr(body, "close", lambda: None)()
            return answer[0], answer[1]

        def run(n: int) -> None:
            for _ in range(n):
                status, headers = call({**post, "wsgi.input": io.BytesIO(b"b" * 1000)})
                assert status.startswith("202")
                url = urlsplit(headers["Location"])
                at = {"PATH_INFO": url.path, "QUERY_STRING": url.query}
                # A plain poll (202 while the task runs), then long polls,
                # each answered the moment the task ends: no sleep between.
                status, headers = call({**plain, **at})
                for _ in range(100):
                    # (The middleware's own 202 names the status URL again.)
                    if not (status.startswith("202") and "Location" in headers):
                        break
                    status, headers = call({**long_poll, **at})
                assert status[:3] in ("200", "410"), status

        # Only what the package's own code allocated counts (the test client's
        # responses are garbage in cycles until a collection). A first batch
        # fills what is bounded (caches, the last responses the client holds).
        mine = [tracemalloc.Filter(True, "*/asyncwsgi/*")]
        tracemalloc.start()
        try:
            run(2000)
            gc.collect()
            start = tracemalloc.take_snapshot().filter_traces(mine)
            run(2000)
            gc.collect()
            end = tracemalloc.take_snapshot().filter_traces(mine)
        finally:
            tracemalloc.stop()
        # A leak per task leaves at least one object per task.
        kept = sum(stat.count_diff for stat in end.compare_to(start, "filename"))
        assert kept < 2000 // 10, f"{kept} objects kept after 2000 more tasks"
    finally:
        mw.close(timeout=5)


def test_an_app_that_leaks_in_one_task_hurts_no_other_task():
    hoard: list[bytes] = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/work/leak":
            hoard.append(bytes(32 * 2**20))  # kept for ever: the app's own leak
        start_response("200 OK", [])
        return [environ["PATH_INFO"].encode()]

    mw = AsyncMiddleware(app, paths=["/work/*"], max_workers=2)
    try:
        client = Client(mw)
        leak = client.post("/work/leak").headers["Location"]
        others = [client.post(f"/work/{i}").headers["Location"] for i in range(20)]
        assert wait_done(client, leak).data == b"/work/leak"
        assert [wait_done(client, o).data for o in others] == [
            f"/work/{i}".encode() for i in range(20)
        ]
        # the middleware holds none of it: the result is the small body only
        record = mw.store.get(leak.rsplit("/", 1)[-1])
        assert record is not None and record.result is not None
        assert len(record.result.body) == len(b"/work/leak")
    finally:
        mw.close(timeout=5)
        hoard.clear()
