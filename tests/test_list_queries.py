"""The task list's query string, parsed strictly on every store: a bad value
is a 400 with a message, never a 500 (nor a page that pretends)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from tests.helpers import wait_done
from tests.servers import wsgi_server
from tests.test_store_contract import make_store

ID = "A" * 32


def forged(created: str, task_id: str = ID) -> str:
    return base64.urlsafe_b64encode(f"{created}:{task_id}".encode()).decode().rstrip("=")


BAD = [
    pytest.param("limit=%C2%B2", id="superscript-two"),
    pytest.param("limit=%D9%A3", id="arabic-indic-three"),
    pytest.param("limit=%EF%BC%95", id="fullwidth-five"),
    pytest.param("limit=", id="empty-limit"),
    pytest.param("limit=+5", id="signed-limit"),
    pytest.param("limit=5%20", id="trailing-space"),
    pytest.param("limit=0", id="zero"),
    pytest.param("limit=501", id="over-the-maximum"),
    pytest.param("cursor=" + forged("nan"), id="nan-cursor"),
    pytest.param("cursor=" + forged("inf"), id="inf-cursor"),
    pytest.param("cursor=" + forged("-inf"), id="minus-inf-cursor"),
    pytest.param("cursor=" + forged("1e999"), id="overflowing-cursor"),
    pytest.param("cursor=" + forged("1_700_000_000.5"), id="underscores-in-cursor"),
    pytest.param("cursor=" + forged(" 1700000000.5"), id="space-in-cursor"),
    pytest.param("cursor=" + forged("1700000000.5", "B" * 31), id="short-id"),
    pytest.param("cursor=" + forged("1700000000.5") + "$$", id="junk-after-cursor"),
    pytest.param("cursor=", id="empty-cursor"),
    pytest.param("state=", id="empty-state"),
    pytest.param("state=Done", id="state-in-capitals"),
]


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


@pytest.fixture(
    params=[("memory", "waitress"), ("sqlite", "gunicorn-gthread"), ("redis", "gunicorn-sync")],
    ids=["memory-waitress", "sqlite-gunicorn", "redis-gunicorn"],
    scope="module",
)
def served(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[int]:
    """tests.apps.hostile_app under a real server, on each store, with a task
    done (so the list has a page)."""
    store, server = request.param
    tmp = tmp_path_factory.mktemp(store)
    env = {}
    if store == "sqlite":
        env["ASYNCWSGI_TEST_STORE"] = "sqlite:///" + str(tmp / "tasks.db")
    elif store == "redis":
        import redis

        url = request.getfixturevalue("redis_url")
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()
        env["ASYNCWSGI_TEST_STORE"] = url
    with wsgi_server(server, "tests.apps.hostile_app:application", tmp / "log", env) as port:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/work/x", headers={"Connection": "close"})
            location = urlsplit(conn.getresponse().getheader("Location") or "").path
        finally:
            conn.close()
        deadline = time.monotonic() + 10
        while _get(port, location)[0] == 202:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield port


@pytest.mark.parametrize("query", BAD)
def test_a_bad_list_query_is_400_with_a_message(served: int, query: str) -> None:
    status, content_type, body = _get(served, "/status/?" + query)
    assert status == 400, body
    assert content_type.startswith("text/plain")
    assert body.strip(), "a 400 says what was wrong"


def test_a_limit_of_thousands_of_digits_is_400(served: int) -> None:
    # Past Python's 4,300-digit limit int() raises; gunicorn refuses a request
    # line this long itself (414), waitress hands it to the app.
    status, _, body = _get(served, "/status/?limit=" + "9" * 5000)
    assert status in (400, 414), body
    assert status == 414 or body.startswith(b"limit must be")


def test_a_good_list_query_still_pages(served: int) -> None:
    status, _, body = _get(served, "/status/?limit=1&state=done")
    assert status == 200
    page = json.loads(body)
    assert len(page["tasks"]) == 1 and page["next"] is None
    # A cursor the list gave, and one made the same way, still work.
    status, _, body = _get(served, "/status/?limit=007&cursor=" + forged("1700000000.5"))
    assert status == 200 and json.loads(body) == {"tasks": [], "next": None}


# -- any query string, on every store ------------------------------------------------


def _quick(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture(params=["memory", "sqlite", "redis"], scope="module")
def lister(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Client]:
    store = make_store(request.param, Path(tmp_path_factory.mktemp("list")), request)
    app = AsyncMiddleware(_quick, paths=["/work/*"], store=store, list_tasks=True)
    client = Client(app)
    try:
        for _ in range(3):
            location = client.post("/work/x").headers["Location"]
        wait_done(client, location)
        yield client
    finally:
        app.close(timeout=10)
        store.close()


_NAMES = st.sampled_from(["limit", "cursor", "state", "other", "LIMIT", ""])
_VALUES = st.one_of(
    st.text(max_size=12).map(lambda text: quote(text, safe="")),
    st.binary(max_size=12).map(lambda raw: quote(raw, safe="")),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["nan", "inf", "-0", "1e3", "0x10", "²", "٣", "５"]).map(quote),
    st.tuples(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            st.text(alphabet="0123456789.e+-_ naif", max_size=10),
        ),
        st.sampled_from([ID, "B" * 31, "x" * 32, ""]),
    ).map(lambda pair: forged(*pair)),
)
_QUERIES = st.one_of(
    st.lists(st.tuples(_NAMES, _VALUES), max_size=4).map(
        lambda pairs: "&".join(f"{name}={value}" for name, value in pairs)
    ),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(query=_QUERIES)
def test_any_query_string_is_a_page_or_a_400(lister: Client, query: str) -> None:
    response = lister.get("/status/", query_string=query)
    assert response.status_code in (200, 400), (query, response.get_data())
    if response.status_code == 400:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.get_data().strip()
    else:
        page = response.get_json()
        assert set(page) == {"tasks", "next"}
