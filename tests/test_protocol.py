"""The HTTP protocol: RFC 7240 Prefer, long-poll, idempotent submits, owners."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.owner import by_cookie, by_header, by_remote_user
from asyncwsgi.prefer import parse_prefer, wait_seconds

from .helpers import wait_done


def sleepy(seconds: float):
    runs: list[bytes] = []

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        runs.append(body)
        time.sleep(seconds)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept:" + body]

    app.runs = runs  # type: ignore[attr-defined]
    return app


class Counting:
    """Counts the requests that reach the middleware (round trips)."""

    def __init__(self, app):
        self.app = app
        self.count = 0

    def __call__(self, environ, start_response):
        self.count += 1
        return self.app(environ, start_response)


def test_prefer_wait_gives_a_fast_task_in_one_round_trip(wrap):
    counting = Counting(wrap(sleepy(0.01)))
    client = Client(counting)
    response = client.post("/work/1", data=b"x", headers={"Prefer": "wait=5"})
    assert counting.count == 1
    assert response.status_code == 200 and response.data == b"slept:x"
    assert response.headers["Preference-Applied"] == "wait=5"
    assert response.headers["Vary"] == "Prefer"


def test_prefer_wait_gives_202_after_about_the_wait_for_a_slow_task(wrap):
    client = Client(wrap(sleepy(3)))
    started = time.monotonic()
    response = client.post("/work/1", headers={"Prefer": "wait=1"})
    elapsed = time.monotonic() - started
    assert response.status_code == 202
    assert 0.9 <= elapsed < 2.0
    assert response.headers["Preference-Applied"] == "wait=1"
    assert response.headers["Vary"] == "Prefer"


def test_max_wait_caps_the_wait(wrap):
    client = Client(wrap(sleepy(3), max_wait=0.5))
    started = time.monotonic()
    response = client.post("/work/1", headers={"Prefer": "wait=100"})
    assert response.status_code == 202
    assert time.monotonic() - started < 1.5


def test_long_poll_returns_when_the_task_ends_not_at_the_deadline(wrap):
    client = Client(wrap(sleepy(0.5)))
    location = client.post("/work/1", data=b"y").headers["Location"]
    started = time.monotonic()
    done = client.get(location, headers={"Prefer": "wait=10"})
    elapsed = time.monotonic() - started
    assert done.status_code == 200 and done.data == b"slept:y"
    assert elapsed < 2.0
    # the replay from the status URL is the captured response, exactly
    assert "Preference-Applied" not in done.headers and "Vary" not in done.headers


def test_long_poll_holds_no_pool_thread(wrap):
    mw = wrap(sleepy(0.3), max_workers=1, max_waiting=10)
    client = Client(mw)
    location = client.post("/work/1").headers["Location"]
    pollers = [
        threading.Thread(
            target=client.get, args=(location,), kwargs={"headers": {"Prefer": "wait=5"}}
        )
        for _ in range(5)
    ]
    for poller in pollers:
        poller.start()
    second = client.post("/work/2", headers={"Prefer": "wait=5"})
    for poller in pollers:
        poller.join()
    assert second.status_code == 200
    assert mw.executor.threads == 1


def test_respond_async_is_opt_in_on_prefer_paths(wrap):
    mw = wrap(sleepy(0.01), paths=[], prefer_paths=["/maybe/*"])
    client = Client(mw)
    direct = client.post("/maybe/1", data=b"d")
    assert direct.status_code == 200 and direct.data == b"slept:d"
    queued = client.post("/maybe/1", data=b"q", headers={"Prefer": "respond-async"})
    assert queued.status_code == 202
    assert queued.headers["Preference-Applied"] == "respond-async"
    assert queued.headers["Vary"] == "Prefer"
    assert wait_done(client, queued.headers["Location"]).data == b"slept:q"


def test_retry_after_grows_with_age_and_is_capped(wrap):
    mw = wrap(sleepy(0), retry_after=1, max_retry_after=30)
    assert mw.retry_after_for(0) == 1
    assert mw.retry_after_for(9) == 1
    assert mw.retry_after_for(100) == 10
    assert mw.retry_after_for(10_000) == 30


def test_idempotent_retry_returns_the_same_task_and_runs_once(wrap):
    app = sleepy(0.2)
    client = Client(wrap(app))
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/work/1", data=b"same", headers=headers)
    retry = client.post("/work/1", data=b"same", headers=headers)
    assert first.status_code == retry.status_code == 202
    assert first.json["id"] == retry.json["id"]
    done = wait_done(client, first.headers["Location"])
    again = client.post("/work/1", data=b"same", headers=headers)
    assert again.status_code == 200 and again.data == done.data == b"slept:same"
    assert app.runs == [b"same"]


def test_reused_key_with_a_different_request_is_422(wrap):
    client = Client(wrap(sleepy(0)))
    headers = {"Idempotency-Key": "k1"}
    assert client.post("/work/1", data=b"a", headers=headers).status_code == 202
    assert client.post("/work/1", data=b"b", headers=headers).status_code == 422
    assert client.post("/work/2", data=b"a", headers=headers).status_code == 422


def test_idempotency_keys_are_bounded_and_scoped_per_owner(wrap):
    client = Client(wrap(sleepy(0), owner=by_header("Authorization")))
    too_long = client.post("/work/1", headers={"Idempotency-Key": "k" * 256, "Authorization": "a"})
    assert too_long.status_code == 400
    alice = client.post("/work/1", headers={"Idempotency-Key": "k", "Authorization": "alice"})
    bob = client.post("/work/1", headers={"Idempotency-Key": "k", "Authorization": "bob"})
    assert alice.json["id"] != bob.json["id"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_owner_binding_gives_404_to_another_or_no_owner(wrap, method):
    client = Client(wrap(sleepy(0), owner=by_header("Authorization")))
    submitted = client.post("/work/1", data=b"mine", headers={"Authorization": "Bearer alice"})
    location = submitted.headers["Location"]
    unknown = client.open("/status/" + "A" * 32, method=method, headers={"Authorization": "x"})
    for headers in ({"Authorization": "Bearer mallory"}, {}):
        response = client.open(location, method=method, headers=headers)
        assert response.status_code == 404 == unknown.status_code
        assert response.data == unknown.data
    done = wait_done(client, location, headers={"Authorization": "Bearer alice"})
    assert done.data == b"slept:mine"


def test_owner_hash_not_value_is_stored(wrap):
    mw = wrap(sleepy(0), owner=by_header("Authorization"))
    client = Client(mw)
    task_id = client.post("/work/1", headers={"Authorization": "secret-token"}).json["id"]
    record = mw.store.get(task_id)
    assert record is not None and record.owner is not None
    assert "secret-token" not in record.owner and len(record.owner) == 64


def test_ready_made_owners():
    env = {"HTTP_COOKIE": "session=abc; other=1", "REMOTE_USER": "ann", "HTTP_X_API_KEY": "k"}
    assert by_cookie("session")(env) == "abc"
    assert by_cookie("missing")(env) is None
    assert by_remote_user(env) == "ann"
    assert by_header("X-Api-Key")(env) == "k"
    assert by_header()(env) is None


@pytest.mark.parametrize(
    "header, expected",
    [
        ("respond-async", {"respond-async": ""}),
        ("RESPOND-ASYNC, Wait=10", {"respond-async": "", "wait": "10"}),
        ('wait="7"; ignored=1', {"wait": "7"}),
        ("wait=1, wait=9", {"wait": "1"}),
        ("handling=lenient, return=minimal", {"handling": "lenient", "return": "minimal"}),
    ],
)
def test_prefer_parsing_follows_rfc_7240(header, expected):
    assert parse_prefer(header) == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "", "99999999999999999"])
def test_malformed_wait_is_ignored(value):
    assert wait_seconds(parse_prefer(f"wait={value}")) is None


def test_several_prefer_headers_are_combined(wrap):
    client = Client(wrap(sleepy(0.01), paths=[], prefer_paths=["/work/*"]))
    response = client.post("/work/1", headers=[("Prefer", "wait=5"), ("Prefer", "respond-async")])
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "respond-async, wait=5"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_hostile_prefer_headers_never_give_a_500(header):
    mw = AsyncMiddleware(sleepy(0), paths=["/work/*"], prefer_paths=["/maybe"], max_wait=0.05)
    try:
        client = Client(mw)
        safe = header.encode("latin-1", "replace").decode("latin-1")
        for path in ("/work/1", "/maybe", "/status/" + "A" * 32):
            response = client.post(path, environ_overrides={"HTTP_PREFER": safe})
            assert response.status_code < 500
    finally:
        mw.close(timeout=5)
