"""End to end under gunicorn with several worker processes and a shared store
(SQLite and Redis).

Every poll goes on a fresh connection, so it lands on whichever worker
accepts it: with a shared store none of them may answer 404.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.services import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.shared_app:application"
TASKS_PER_VARIANT = 250
VARIANTS = {
    "sync": ["-w", "4"],
    "gthread": ["-w", "4", "-k", "gthread", "--threads", "4"],
    # The store is opened in the master, then used by forked workers.
    "sync-preload": ["-w", "4", "--preload"],
}

Answer = tuple[int, dict[str, str], bytes]


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "tasks.db")
    import redis

    url: str = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def call(port: int, method: str, path: str, body: bytes | None = None) -> Answer:
    """One request on its own connection (``Connection: close``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@contextmanager
def gunicorn(
    tmp_path: Path,
    store_url: str,
    args: list[str],
    lease: float = 30.0,
    graceful_timeout: int = 5,
    *,
    app: str = APP,
    environ: dict[str, str] | None = None,
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``app`` under gunicorn with ``args`` on a free port, its store at
    ``store_url`` and ``environ`` added to its environment."""
    port = free_port()
    env = dict(os.environ)
    env["ASYNCWSGI_TEST_STORE"] = store_url
    env["ASYNCWSGI_TEST_LEASE"] = str(lease)
    env.update(environ or {})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        *args,
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        str(graceful_timeout),
        "--timeout",
        "60",
        "--log-level",
        "warning",
        "-c",
        "python:tests.gunicorn_conf",
        app,
    ]
    with open(tmp_path / f"gunicorn-{port}.log", "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise AssertionError(
                        f"gunicorn exited with {process.returncode}: "
                        + (tmp_path / f"gunicorn-{port}.log").read_text(errors="replace")
                    )
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield port, process
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def poll(port: int, location: str, timeout: float = 30.0) -> tuple[Answer, int, int]:
    """Poll until the answer is not 202; also count the polls and the 404s."""
    deadline = time.monotonic() + timeout
    polls = not_found = 0
    while True:
        answer = call(port, "GET", location)
        polls += 1
        if answer[0] == 404:
            not_found += 1
        elif answer[0] != 202:
            return answer, polls, not_found
        if time.monotonic() > deadline:
            raise AssertionError(f"{location} still {answer[0]} after {timeout}s")
        time.sleep(0.02)


def submit_and_wait(port: int, i: int) -> tuple[str, bytes, Answer, int, int]:
    path = f"/work/item-{i}?n={i}&ms={i % 5 * 30}"
    body = f"payload {i} ".encode() * (i % 7 + 1)
    status, headers, _ = call(port, "POST", path, body)
    assert status == 202, status
    location = headers["Location"]
    answer, polls, not_found = poll(port, location)
    expected = f"/work/item-{i}|n={i}&ms={i % 5 * 30}|".encode() + body
    return location, expected, answer, polls, not_found


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_many_tasks_no_404_and_results_survive_restart(
    tmp_path: Path, store_url: str, variant: str
) -> None:
    args = VARIANTS[variant]
    with gunicorn(tmp_path, store_url, args) as (port, _):
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(lambda i: submit_and_wait(port, i), range(TASKS_PER_VARIANT)))
    polls = sum(outcome[3] for outcome in outcomes)
    not_found = sum(outcome[4] for outcome in outcomes)
    wrong = [o[0] for o in outcomes if o[2][0] != 200 or o[2][2] != o[1]]
    worker_pids = {o[2][1].get("X-Worker-Pid") for o in outcomes}
    print(
        f"\n[{variant}, {store_url.partition(':')[0]}] submitted {len(outcomes)}, "
        f"polls {polls}, 404s {not_found}, "
        f"wrong bodies {len(wrong)}, tasks ran in {len(worker_pids)} worker processes"
    )
    assert not_found == 0
    assert wrong == []
    assert len(outcomes) == TASKS_PER_VARIANT
    assert len(worker_pids) >= 2

    # A whole new gunicorn (new processes) serves the finished results.
    with gunicorn(tmp_path, store_url, args) as (port, _):
        for location, expected, _answer, _, _ in outcomes[::10]:
            status, _headers, body = call(port, "GET", location)
            assert (status, body) == (200, expected)


def test_killed_worker_answers_500_within_lease(tmp_path: Path, store_url: str) -> None:
    lease = 2.0
    with gunicorn(tmp_path, store_url, VARIANTS["sync"], lease=lease) as (port, master):
        status, headers, _ = call(port, "POST", "/work/slow?seconds=60")
        assert status == 202
        location = headers["Location"]
        quick_status, quick_headers, _ = call(port, "POST", "/work/quick", b"before")
        assert quick_status == 202
        (done_status, _, done_body), _, not_found = poll(port, quick_headers["Location"])
        assert (done_status, done_body, not_found) == (200, b"/work/quick||before", 0)

        # The progress message tells which worker runs the slow task.
        deadline = time.monotonic() + 15
        pid = None
        while pid is None:
            status, _, body = call(port, "GET", location)
            assert status == 202
            progress = json.loads(body)["progress"]
            if progress and progress["message"].startswith("pid="):
                pid = int(progress["message"][4:])
            else:
                assert time.monotonic() < deadline, "the slow task never reported progress"
                time.sleep(0.05)
        assert pid != master.pid
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()

        (status, _, body), _, not_found = poll(port, location, timeout=lease + 10)
        elapsed = time.monotonic() - killed
        print(f"\n[killed worker] 500 after {elapsed:.2f}s (lease {lease}s)")
        assert status == 500
        assert b"lost" in body
        assert not_found == 0
        assert elapsed < lease + 5

    # After a restart of the whole server, results are still served: the
    # finished one and the lost verdict alike.
    with gunicorn(tmp_path, store_url, VARIANTS["sync"], lease=lease) as (port, _):
        assert call(port, "GET", quick_headers["Location"])[::2] == (200, b"/work/quick||before")
        status, _, body = call(port, "GET", location)
        assert status == 500 and b"lost" in body


def test_control_in_process_store_answers_404_here(tmp_path: Path) -> None:
    # The same load with the in-process store: polls that land on another
    # worker get 404. Shows that the test above can see the failure it rules out.
    with gunicorn(tmp_path, "memory:", VARIANTS["sync"]) as (port, _):
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(lambda i: submit_and_wait(port, i), range(60)))
    not_found = sum(outcome[4] for outcome in outcomes)
    print(f"\n[control, memory store] submitted {len(outcomes)}, 404s {not_found}")
    assert not_found > 0
