"""Prefer: wait under real servers: a long-poll never outlives gunicorn's
default worker timeout, and waiting requests never hold every thread."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from bench.services import free_port, stop_group, wait_port

from .helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.apps.shared_app:application"


def call(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], float]:
    """One request on its own connection: status, headers, seconds taken."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders()), time.monotonic() - started
    finally:
        conn.close()


@contextmanager
def gunicorn(tmp_path: Path, *args: str) -> Iterator[tuple[int, Path]]:
    """gunicorn with its own defaults (notably ``--timeout 30``) but ``args``."""
    port = free_port()
    env = dict(os.environ)
    env["ASYNCWSGI_TEST_STORE"] = "sqlite:///" + str(tmp_path / "tasks.db")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *args, "-b", f"127.0.0.1:{port}",
             "--graceful-timeout", "1", "-c", "python:tests.gunicorn_conf", APP],
            cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        try:
            wait_port(port, proc, timeout=30)
            yield port, log_path
        finally:
            stop_group(proc, timeout=10)


@pytest.mark.slow
def test_a_long_poll_never_outlives_gunicorns_default_worker_timeout(tmp_path):
    with gunicorn(tmp_path, "-w", "1") as (port, log):
        pid = call(port, "GET", "/pid")[1]["X-Worker-Pid"]
        status, headers, took = call(port, "POST", "/work/slow?seconds=60", {"Prefer": "wait=60"})
        assert status == 202
        assert took < 20  # well inside the sync worker's 30 s
        location = headers["Location"]
        status, headers, took = call(port, "GET", location, {"Prefer": "wait=60"})
        assert status == 202 and took < 20
        assert headers["Preference-Applied"] == "wait=10"
        # the same worker answers: it was never killed for a timeout
        assert call(port, "GET", "/pid")[1]["X-Worker-Pid"] == pid
        assert "WORKER TIMEOUT" not in log.read_text(errors="replace")


@pytest.mark.slow
def test_waiting_clients_never_hold_every_thread_of_a_gthread_worker(tmp_path):
    with gunicorn(tmp_path, "-w", "1", "-k", "gthread", "--threads", "4") as (port, _):
        location = call(port, "POST", "/work/slow?seconds=30")[1]["Location"]
        with ThreadPoolExecutor(8) as pool:
            waits = [
                pool.submit(call, port, "GET", location, {"Prefer": "wait=10"}) for _ in range(8)
            ]
            time.sleep(1.0)  # the waits have arrived
            status, _, took = call(port, "GET", "/unrelated")
            assert status == 200
            assert took < 2.0  # was 9.6 s with every thread waiting
            answers = [future.result(timeout=30) for future in waits]
        applied = [a for a in answers if "Preference-Applied" in a[1]]
        # The default bound: at most one fewer than the 4 threads wait; the
        # others were answered at once.
        assert 1 <= len(applied) <= 3
        assert all(a[0] == 202 for a in answers)


def test_by_default_one_fewer_than_the_server_threads_may_wait():
    """max_waiting=None follows the server: each thread that brings a
    submission or a status request counts, and one fewer than those may wait
    (never fewer than 2). Four threads one after another, each asking to
    wait: the first two wait; the third finds 2 waiting of 3 threads and is
    answered at once; the fourth (4 threads: 3 may wait) waits."""
    release = threading.Event()

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(10)
        start_response("200 OK", [])
        return [b"ok"]

    mw = AsyncMiddleware(slow, paths=["/work/*"], max_wait=5)
    assert mw.max_waiting is None
    answers: dict[int, tuple[float, int]] = {}
    located = threading.Event()
    where: list[str] = []
    # The threads live on after their answer, as a server's pool threads do
    # (an ended thread's id may be given to the next one).
    end = threading.Event()

    def wait(thread: int) -> None:
        client = Client(mw)
        if thread == 0:  # the submission comes from one of the four
            where.append(client.post("/work/1").headers["Location"])
            located.set()
        located.wait(10)
        started = time.monotonic()
        response = client.get(where[0], headers={"Prefer": "wait=5"})
        answers[thread] = (time.monotonic() - started, response.status_code)
        end.wait(20)

    threads: list[threading.Thread] = []
    try:
        waits = mw._waits  # (the count of waiting requests is not public)
        # One after another, each counted (waiting, or answered) before the next.
        for number, counted in enumerate(
            (lambda: waits._waiting == 1, lambda: waits._waiting == 2,
             lambda: 2 in answers, lambda: waits._waiting == 3)
        ):  # fmt: skip
            thread = threading.Thread(target=wait, args=(number,))
            thread.start()
            threads.append(thread)
            assert wait_for(counted, 10, every=0.01), number
        assert set(answers) == {2}
        assert answers[2][0] < 1 and answers[2][1] == 202  # at once, not done
        release.set()
        deadline = time.monotonic() + 10
        while len(answers) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The three that waited got the result the moment it came.
        assert {n for n, (_, status) in answers.items() if status == 200} == {0, 1, 3}
    finally:
        release.set()
        end.set()
        for thread in threads:
            thread.join(10)
        mw.close(timeout=10)


def test_beyond_max_waiting_a_request_is_answered_at_once_without_waiting():
    release = threading.Event()

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(10)
        start_response("200 OK", [])
        return [b"ok"]

    mw = AsyncMiddleware(slow, paths=["/work/*"], max_waiting=1, max_wait=5)
    try:
        client = Client(mw)
        location = client.post("/work/1").headers["Location"]
        first = threading.Thread(target=client.get, args=(location,), kwargs={
            "headers": {"Prefer": "wait=5"}})  # fmt: skip
        first.start()
        time.sleep(0.3)
        started = time.monotonic()
        second = client.get(location, headers={"Prefer": "wait=5"})
        assert time.monotonic() - started < 1
        assert second.status_code == 202
        assert "Preference-Applied" not in second.headers
        release.set()
        first.join(10)
        done = client.get(location, headers={"Prefer": "wait=5"})
        assert done.data == b"ok"
    finally:
        release.set()
        mw.close(timeout=10)
