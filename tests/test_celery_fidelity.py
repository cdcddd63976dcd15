"""Through a real Celery worker, the app reads what it would read directly and
the client gets what a direct call gives: httpbin served by gunicorn, once
straight and once behind asyncwsgi with a Celery worker running its tasks,
also mounted under a path that needs percent-encoding, and a chunked body."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from bench.services import stop_group
from tests.helpers import emptied_dbs, need

from .helpers import captured_headers
from .servers import ROOT, wsgi_server
from .test_httpbin_differential import CASES

pytestmark = pytest.mark.slow

MOUNT = "/my app"  # sent as /my%20app
HOST = "api.test"  # the same Host to both servers: httpbin echoes it
Answer = tuple[int, list[tuple[str, str]], bytes]


def _need(module: str) -> None:
    need(module)


class Servers:
    def __init__(self, ports: dict[tuple[str, str], int]) -> None:
        self.ports = ports


@pytest.fixture(scope="module")
def servers(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    _need("celery")
    _need("httpbin")

    logs = tmp_path_factory.mktemp("celery-fidelity")
    broker, store = emptied_dbs(redis_url, 10, 11)
    env = {
        **os.environ,
        "ASYNCWSGI_TEST_BROKER": broker,
        "ASYNCWSGI_TEST_STORE": store,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    with open(logs / "worker.log", "wb") as worker_log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.apps.celery_httpbin:celery_app",
                "worker",
                "--concurrency",
                "2",
                "--loglevel",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=env,
            stdout=worker_log,
            stderr=worker_log,
            start_new_session=True,
        )
    try:
        apps = {
            ("direct", ""): "direct",
            ("async", ""): "application",
            ("direct", MOUNT): "direct_mounted",
            ("async", MOUNT): "mounted",
        }
        with ExitStack() as stack:
            ports = {
                key: stack.enter_context(
                    wsgi_server(
                        "gunicorn-sync", f"tests.apps.celery_httpbin:{name}", logs / name, env
                    )
                )
                for key, name in apps.items()
            }
            yield Servers(ports)
    finally:
        stop_group(worker)


def _call(port: int, method: str, target: str, body: Any = None, chunked: bool = False) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Host": HOST, "Cookie": "session=s1", "Content-Type": "application/json"}
        conn.request(method, target, body=body, headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def _through_celery(
    port: int, method: str, target: str, body: Any, chunked: bool = False
) -> Answer:
    status, headers, data = _call(port, method, target, body, chunked)
    assert status == 202, (status, data)
    location = dict(headers)["Location"]
    deadline = time.monotonic() + 30
    while True:
        answer = _call(port, "GET", location)
        if answer[0] != 202 or dict(answer[1]).get("Location") != location:
            return answer
        assert time.monotonic() < deadline, f"{location} still 202"
        time.sleep(0.05)


def _comparable(answer: Answer) -> tuple[int, list[tuple[str, str]], Any]:
    status, headers, body = answer
    # Date and Server are the server's own, per response, and so is chunked
    # framing: gunicorn chunks a body of no stated length, which a replay
    # sends with its stored length instead.
    kept = [(k, v) for k, v in headers if k not in ("Date", "Server", "Transfer-Encoding")]
    if dict(headers).get("Content-Encoding") == "gzip":
        # gzip's header holds the time it was made.
        body = gzip.decompress(body)
        kept = [(k, v) for k, v in kept if k != "Content-Length"]
    return status, kept, body


@pytest.mark.parametrize("mount", ["", MOUNT], ids=["root", "mount-with-space"])
@pytest.mark.parametrize("method, path, body", CASES)
def test_celery_task_response_equals_direct_response(
    servers: Servers, mount: str, method: str, path: str, body: bytes | None
) -> None:
    prefix = mount.replace(" ", "%20")
    direct = _call(servers.ports["direct", mount], method, prefix + path, body)
    replayed = _through_celery(servers.ports["async", mount], method, prefix + path, body)
    # The replay of a 200 adds its validators after the captured headers.
    status, headers, data = replayed
    sent = [(k, v) for k, v in direct[1] if k != "Transfer-Encoding"]  # what the app framed
    assert _comparable((status, captured_headers(headers, sent), data)) == _comparable(direct)
    if mount and path.startswith("/post"):
        assert json.loads(replayed[2])["url"] == f"http://{HOST}/my%20app/post"


@pytest.mark.parametrize("mount", ["", MOUNT], ids=["root", "mount-with-space"])
@pytest.mark.parametrize("path", ["/werkzeug-echo", "/post"], ids=["werkzeug", "httpbin"])
def test_chunked_post_reaches_the_celery_task_whole(
    servers: Servers, mount: str, path: str
) -> None:
    payload = b"".join(f"chunk {i};".encode() for i in range(3000))
    pieces = [payload[i : i + 5000] for i in range(0, len(payload), 5000)]
    prefix = mount.replace(" ", "%20")
    status, headers, data = _through_celery(
        servers.ports["async", mount], "POST", prefix + path, iter(pieces), chunked=True
    )
    assert status == 200, data
    if path == "/post":
        assert json.loads(data)["data"] == payload.decode()
    else:
        assert data == payload
