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
