"""What the middleware itself writes: standard reason phrases, status URLs a
client can follow under any mount (and absolute ones with ``location_base``),
strict JSON status documents, and a long-poll that sees its task deleted."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.client import fetch
from asyncwsgi.results import error_result

from .helpers import serving, wait_done


def _strict(text: bytes) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"not RFC 8259 JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = f"{environ['SCRIPT_NAME']}|{environ['PATH_INFO']}".encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# -- reason phrases ------------------------------------------------------------


@pytest.mark.parametrize(
    "code, line",
    [
        (500, "500 Internal Server Error"),
        (503, "503 Service Unavailable"),
        (504, "504 Gateway Timeout"),
        (410, "410 Gone"),
    ],
)
def test_error_results_use_the_standard_reason_phrase(code: int, line: str) -> None:
    assert error_result(code).status == line


def test_task_ended_at_shutdown_says_service_unavailable(wrap) -> None:
    release = threading.Event()

    def blocking(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(10)
        start_response("200 OK", [])
        return []

    mw = wrap(blocking, max_workers=1)
    client = Client(mw)
    client.post("/work/running")
    queued = client.post("/work/queued").headers["Location"]
    assert mw.close(timeout=0.2) is False
    release.set()
    answer = client.get(queued)
    assert answer.status == "503 Service Unavailable"


# -- Location under mounts that need percent-encoding --------------------------


@pytest.mark.parametrize(
    "mount, url_path",
    [
        pytest.param("/my app", "/my%20app", id="space"),
        pytest.param("/café/ü", "/caf%C3%A9/%C3%BC", id="non-ascii"),
        pytest.param("/50%", "/50%25", id="percent"),
    ],
)
def test_fetch_follows_a_task_under_a_mount_that_needs_encoding(
    wrap, mount: str, url_path: str
) -> None:
    mw = wrap(_echo)
    # A WSGI string: the bytes of the URL's path as the server decodes them.
    key = mount.encode("utf-8").decode("latin-1")
    site = DispatcherMiddleware(_echo, {key: mw})
    with serving(site) as base:
        submitted = Client(site).post(url_path + "/work/x")
        assert submitted.status_code == 202
        location = submitted.headers["Location"]
        assert location.startswith(url_path + "/status/")
        assert _strict(submitted.get_data())["status_url"] == location
        response = fetch(base + url_path + "/work/x", method="POST", timeout=10)
    assert response.status == 200
    assert response.body == (key + "|/work/x").encode("latin-1")


# -- location_base ------------------------------------------------------------


def test_location_base_makes_absolute_status_urls_never_from_host(wrap) -> None:
    mw = wrap(_echo, location_base="https://api.example.com/")
    client = Client(mw)
    submitted = client.post(
        "/work/x", base_url="http://evil.example/my%20app", headers={"Host": "evil.example"}
    )
    location = submitted.headers["Location"]
    assert location.startswith("https://api.example.com/my%20app/status/")
    assert _strict(submitted.get_data())["status_url"] == location
    path = location.removeprefix("https://api.example.com/my%20app")
    assert wait_done(client, location, base_url="http://x/my%20app").status_code == 200
    assert client.get(path, base_url="http://x/my%20app").status_code == 200


@pytest.mark.parametrize(
    "base", ["api.example.com", "/status", "ftp://x", "https://x/?a=1", "https://x/#f", "https://"]
)
def test_location_base_must_be_an_absolute_http_url(base: str) -> None:
    with pytest.raises(ValueError, match="location_base"):
        AsyncMiddleware(_echo, location_base=base)


# -- strict JSON status documents ------------------------------------------------


@pytest.mark.parametrize("done, total", [(float("nan"), 1), (1, float("inf")), (-float("inf"), 2)])
def test_progress_must_be_finite(wrap, done: float, total: float) -> None:
    refused: list[BaseException] = []
    started = threading.Event()
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        task = environ["asyncwsgi.task"]
        task.set_progress(1, 2, "fine")
        try:
            task.set_progress(done, total)
        except ValueError as exc:
            refused.append(exc)
        started.set()
        release.wait(10)
        start_response("200 OK", [])
        return []

    client = Client(wrap(app))
    location = client.post("/work/x").headers["Location"]
    assert started.wait(10)
    document = _strict(client.get(location).get_data())
    release.set()
    assert document["progress"] == {"done": 1, "total": 2, "message": "fine"}
    assert len(refused) == 1 and "finite" in str(refused[0])


# -- DELETE during a long poll ----------------------------------------------------


@pytest.mark.parametrize("store", ["memory:", "sqlite"])
def test_delete_ends_a_waiting_poll_with_404(wrap, tmp_path: Path, store: str) -> None:
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(10)
        start_response("200 OK", [])
        return []

    url = "sqlite:///" + str(tmp_path / "t.db") if store == "sqlite" else store
    mw = wrap(app, store=url, max_wait=10)
    location = Client(mw).post("/work/x").headers["Location"]
    answers: list[tuple[int, float]] = []

    def long_poll() -> None:
        started = time.monotonic()
        status = Client(mw).get(location, headers={"Prefer": "wait=8"}).status_code
        answers.append((status, time.monotonic() - started))

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.3)
    assert Client(mw).delete(location).status_code == 204
    poller.join(10)
    release.set()
    ((status, took),) = answers
    assert status == 404
    assert took < 2.0
