"""A worker SIGKILLed under gunicorn leaves its tasks queued or running in the
shared store. Once their lease has passed they stop counting against
``max_pending``, even if nobody ever polls them: a full table takes new work
again (issue 12 item 6: SQLite stayed full)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.test_gunicorn_shared import call, gunicorn, store_url  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

LEASE = 2.0


def test_a_killed_workers_tasks_do_not_keep_the_table_full(
    tmp_path: Path,
    store_url: str,  # noqa: F811 (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASYNCWSGI_TEST_MAX_PENDING", "2")
    with gunicorn(tmp_path, store_url, ["-w", "1"], lease=LEASE) as (port, master):
        locations = []
        for _ in range(2):
            status, headers, _ = call(port, "POST", "/work/slow?seconds=60")
            assert status == 202
            locations.append(headers["Location"])
        assert call(port, "POST", "/work/quick")[0] == 503  # full
        deadline = time.monotonic() + 15
        while True:  # the running task names its worker
            progress = json.loads(call(port, "GET", locations[0])[2])["progress"]
            if progress and progress["message"].startswith("pid="):
                worker = int(progress["message"][4:])
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert worker != master.pid
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()

        # No poll of the two lost tasks: only submissions.
        while True:
            status, headers, body = call(port, "POST", "/work/quick", b"after")
            if status == 202:
                break
            assert status == 503, body
            assert time.monotonic() - killed < LEASE + 10, "the table stayed full"
            time.sleep(0.2)
        elapsed = time.monotonic() - killed
        kind = store_url.partition(":")[0]
        print(f"\n[{kind}] a submission accepted {elapsed:.1f} s after the kill")
        assert elapsed < LEASE + 5
        for location in locations:
            status, _, body = call(port, "GET", location)
            # lost while running (500), or while still queued in the killed
            # worker's pool (503, never ran)
            assert (status == 500 and b"lost" in body) or (
                status == 503 and b"not started in time" in body
            ), (status, body)
