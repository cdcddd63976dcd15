"""A graceful exit fails the process's running tasks promptly, whatever the
store: gunicorn's graceful restart (SIGHUP) with SQLite, through real
gunicorn. The worker's exit waits its grace (10 s) for the task, then ends it
as a 500 that says so, long before its lease would have."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_gunicorn_shared import call, gunicorn

pytestmark = pytest.mark.slow

LEASE = 15.0  # the heartbeat's first beat falls inside the exit's grace


def test_graceful_restart_with_sqlite_fails_running_tasks_promptly(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "tasks.db")
    # gunicorn's default graceful timeout (30 s): the worker may use its grace.
    with gunicorn(tmp_path, url, ["-w", "1"], lease=LEASE, graceful_timeout=30) as (port, master):
        status, headers, _ = call(port, "POST", "/work/slow?seconds=60")
        assert status == 202
        location = headers["Location"]
        deadline = time.monotonic() + 10
        while json.loads(call(port, "GET", location)[2])["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)

        began = time.monotonic()
        os.kill(master.pid, signal.SIGHUP)  # new workers; the old one exits gracefully
        while True:
            status, _, body = call(port, "GET", location)
            if status != 202:
                break
            assert time.monotonic() - began < LEASE + 20, "still 202"
            time.sleep(0.2)
        elapsed = time.monotonic() - began
        print(f"\n[graceful restart, sqlite] task ended {elapsed:.1f} s after SIGHUP: {body!r}")
        assert status == 500
        assert b"shut down" in body  # not "lost": the worker said why
        assert elapsed < 14


_EXITING_APP = """
import sys, time
from werkzeug.test import Client
from asyncwsgi import AsyncMiddleware

def slow(environ, start_response):
    time.sleep(60)
    start_response("200 OK", [])
    return [b"late"]

app = AsyncMiddleware(slow, paths=["/work/*"], store=sys.argv[1], lease=6)
client = Client(app)
location = client.post("/work/1").headers["Location"]
while client.get(location).json["state"] != "running":
    time.sleep(0.02)
print(location.rsplit("/", 1)[1], flush=True)
sys.exit(0)  # a plain graceful exit, from the main thread
"""


def test_sys_exit_with_sqlite_fails_running_tasks(tmp_path: Path) -> None:
    from asyncwsgi.stores import open_store

    url = "sqlite:///" + str(tmp_path / "tasks.db")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _EXITING_APP, url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert "Error" not in done.stderr, done.stderr
    store = open_store(url)
    try:
        record = store.get(done.stdout.strip())
    finally:
        store.close()
    assert record is not None and record.state == "done"
    assert record.result is not None and b"shut down" in record.result.body
    assert elapsed < 20
