"""Resumable downloads of a result: Range, If-Range, ETag, Accept-Ranges."""

from __future__ import annotations

import pytest
from werkzeug.test import Client

from asyncwsgi.stores import MemoryStore

from .helpers import wait_done

BODY = bytes(range(256)) * 4096  # 1 MiB


def app(environ, start_response):
    headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BODY)))]
    if environ["PATH_INFO"] == "/work/etag":
        headers.append(("ETag", '"app-own"'))
    elif environ["PATH_INFO"] == "/work/missing":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"nope"]
    start_response("200 OK", headers)
    return [BODY[i : i + 65536] for i in range(0, len(BODY), 65536)]


@pytest.fixture(
    params=[("memory", 1024), ("memory", 4 * 2**20), ("redis", 1024)],
    ids=["spooled-file", "in-memory", "spooled-redis-chunks"],
)
def done(request, wrap, tmp_path):
    kind, threshold = request.param
    if kind == "redis":
        from asyncwsgi.stores.redis import RedisStore

        # Chunks of 100 000 bytes: ranges start and end inside and across them.
        store = RedisStore.from_url(
            request.getfixturevalue("redis_url"), prefix="ranges-test:", chunk_size=100_000
        )
    else:
        store = MemoryStore(results_dir=str(tmp_path))
    client = Client(wrap(app, store=store, spool_threshold=threshold))
    location = client.post("/work/file", buffered=True).headers["Location"]
    full = wait_done(client, location, buffered=True)
    yield client, location, full
    store.close()


def test_a_full_replay_carries_accept_ranges_and_a_strong_etag(done):
    client, location, full = done
    assert full.status_code == 200
    assert full.data == BODY
    assert full.headers["Accept-Ranges"] == "bytes"
    etag = full.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert full.headers["Content-Length"] == str(len(BODY))
    again = client.get(location, buffered=True)
    assert again.headers["ETag"] == etag  # stable: derived from the stored body


@pytest.mark.parametrize(
    "header, start, stop",
    [
        pytest.param("bytes=0-9", 0, 10, id="head-of-body"),
        pytest.param("bytes=1000-", 1000, len(BODY), id="resume"),
        pytest.param("bytes=-100", len(BODY) - 100, len(BODY), id="suffix"),
        pytest.param("bytes=5-99999999", 5, len(BODY), id="past-the-end"),
    ],
)
def test_a_range_gets_206_with_exactly_those_bytes(done, header, start, stop):
    client, location, full = done
    part = client.get(location, headers={"Range": header}, buffered=True)
    assert part.status_code == 206
    assert part.data == BODY[start:stop]
    assert part.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(BODY)}"
    assert part.headers["Content-Length"] == str(stop - start)
    assert part.headers["ETag"] == full.headers["ETag"]


def test_an_unsatisfiable_range_is_416(done):
    client, location, _ = done
    refused = client.get(location, headers={"Range": f"bytes={len(BODY)}-"}, buffered=True)
    assert refused.status_code == 416
    assert refused.headers["Content-Range"] == f"bytes */{len(BODY)}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "lines=1-2", "bytes=x-y"])
def test_several_or_unknown_ranges_get_the_whole_body(done, header):
    client, location, _ = done
    whole = client.get(location, headers={"Range": header}, buffered=True)
    assert whole.status_code == 200 and whole.data == BODY


def test_if_range_with_the_current_etag_resumes_and_a_stale_one_gets_everything(done):
    client, location, full = done
    etag = full.headers["ETag"]
    resumed = client.get(location, headers={"Range": "bytes=100-", "If-Range": etag}, buffered=True)
    assert resumed.status_code == 206 and resumed.data == BODY[100:]
    stale = client.get(
        location, headers={"Range": "bytes=100-", "If-Range": '"stale"'}, buffered=True
    )
    assert stale.status_code == 200 and stale.data == BODY
    dated = client.get(
        location,
        headers={"Range": "bytes=100-", "If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"},
        buffered=True,
    )
    assert dated.status_code == 200 and dated.data == BODY


def test_head_with_a_range_sends_the_headers_only(done):
    client, location, _ = done
    head = client.head(location, headers={"Range": "bytes=10-"}, buffered=True)
    assert head.status_code == 206 and head.data == b""
    assert head.headers["Content-Length"] == str(len(BODY) - 10)


def test_the_apps_own_validators_win(wrap, tmp_path):
    client = Client(wrap(app, store=MemoryStore(results_dir=str(tmp_path))))
    location = client.post("/work/etag", buffered=True).headers["Location"]
    full = wait_done(client, location, buffered=True)
    assert full.headers.getlist("ETag") == ['"app-own"']
    part = client.get(
        location, headers={"Range": "bytes=1-", "If-Range": '"app-own"'}, buffered=True
    )
    assert part.status_code == 206 and part.data == BODY[1:]


def test_only_a_200_is_ranged(wrap):
    client = Client(wrap(app))
    location = client.post("/work/missing", buffered=True).headers["Location"]
    wait_done(client, location, buffered=True)
    missing = client.get(location, headers={"Range": "bytes=1-"}, buffered=True)
    assert missing.status_code == 404 and missing.data == b"nope"
    assert "ETag" not in missing.headers and "Accept-Ranges" not in missing.headers


# -- RFC 9110 through a real server ------------------------------------------------


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        # response.headers: looked up without regard to case.
        return response.status, response.headers, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def hundred(tmp_path_factory):
    """waitress serving tests.apps.hostile_app; the status URLs of a finished
    100-byte result without validators and of one with the app's weak ETag."""
    import time
    from urllib.parse import urlsplit

    from tests.servers import wsgi_server

    log = tmp_path_factory.mktemp("ranges") / "waitress.log"
    with wsgi_server("waitress", "tests.apps.hostile_app:application", log) as port:
        locations = {}
        for name in ("hundred", "weak"):
            status, headers, _ = _request(port, "POST", f"/work/{name}")
            assert status == 202
            locations[name] = urlsplit(headers["Location"]).path
            deadline = time.monotonic() + 10
            while _request(port, "GET", locations[name])[0] == 202:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        yield port, locations


@pytest.mark.parametrize("suffix", ["100", "101", "1000", "9" * 30, "9" * 5000])
def test_a_suffix_longer_than_the_body_selects_all_of_it(hundred, suffix):
    # RFC 9110 14.1.3: "If the selected representation is shorter than the
    # specified suffix-length, the entire representation is used."
    port, locations = hundred
    header = {"Range": "bytes=-" + suffix}
    status, headers, body = _request(port, "GET", locations["hundred"], header)
    assert status == 206
    assert headers["Content-Range"] == "bytes 0-99/100"
    assert body == bytes(range(100))


def test_an_empty_suffix_is_416(hundred):
    port, locations = hundred
    status, headers, _ = _request(port, "GET", locations["hundred"], {"Range": "bytes=-0"})
    assert status == 416 and headers["Content-Range"] == "bytes */100"


def test_if_range_compares_strongly(hundred):
    # RFC 9110 13.1.5: If-Range uses the strong comparison; a weak tag, ours
    # marked weak or the app's own weak ETag, never matches: all of it, 200.
    port, locations = hundred
    status, headers, body = _request(port, "GET", locations["hundred"])
    ours = headers["ETag"]
    assert status == 200 and not ours.startswith("W/")
    cases = [
        (locations["hundred"], ours, 206),
        (locations["hundred"], "W/" + ours, 200),
        (locations["weak"], 'W/"v1"', 200),
        (locations["weak"], '"v1"', 200),
    ]
    for location, tag, expected in cases:
        status, headers, body = _request(
            port, "GET", location, {"Range": "bytes=10-", "If-Range": tag}
        )
        assert status == expected, (location, tag)
        assert body == bytes(range(100))[10 if expected == 206 else 0 :]
