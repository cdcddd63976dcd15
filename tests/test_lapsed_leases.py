"""A worker SIGKILLed under gunicorn leaves its tasks queued or running in the
shared store. Once their lease has passed they stop counting against
``max_pending``, even if nobody ever polls them: a full table takes new work
again (issue 12 item 6: SQLite stayed full). Nor do they keep the byte budget
spent or their "lost" callback unsent: every process sweeps lapsed leases on
its own (issue 24 item 1)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.services import children
from tests.test_callbacks import SECRET, Receiver, receiving
from tests.test_gunicorn_shared import Answer, call, gunicorn, store_url  # noqa: F401 (a fixture)

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


def post(port: int, path: str, headers: dict[str, str]) -> Answer:
    """A POST with ``headers`` on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, headers={**headers, "Connection": "close"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@contextmanager
def _spooling(
    tmp_path: Path,
    store_url: str,  # noqa: F811 (a parameter, the fixture of the same name imported above)
    receiver: Receiver,
    *,
    workers: int,
    preload: bool,
) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """The spooling app under gunicorn (``workers`` gthread workers, the app
    preloaded in the master or not), calling back to ``receiver``: the
    receiver's base URL, the port and gunicorn's master."""
    with receiving(receiver) as hooks:
        environ = {
            "ASYNCWSGI_TEST_CALLBACK_ALLOW": hooks,
            "ASYNCWSGI_TEST_CALLBACK_SECRET": SECRET,
        }
        if store_url.startswith("sqlite:"):
            environ["ASYNCWSGI_TEST_RESULTS_DIR"] = str(tmp_path / "results")
        args = ["-w", str(workers), "-k", "gthread", "--threads", "4"]
        args += ["--preload"] if preload else []
        app = "tests.apps.spool_app:application"
        with gunicorn(tmp_path, store_url, args, lease=LEASE, app=app, environ=environ) as (
            port,
            master,
        ):
            yield hooks, port, master


@pytest.mark.parametrize("preload", [False, True], ids=["imported-in-workers", "preload"])
def test_a_worker_killed_mid_spool_gives_back_the_budget_and_is_called_back_unpolled(
    tmp_path: Path,
    store_url: str,  # noqa: F811 (the fixture imported above)
    preload: bool,
) -> None:
    """The killed worker's writer had reserved ``max_result``, the whole byte
    budget: until its lease is judged, every submission is refused. Nobody
    polls its task; the processes' sweepers alone end it. With ``--preload``
    the middleware is built in gunicorn's master, and each forked worker
    runs a sweeper of its own."""
    receiver = Receiver()
    with _spooling(tmp_path, store_url, receiver, workers=2, preload=preload) as (
        hooks,
        port,
        master,
    ):
        location, task_id = _spool_called_back(port, hooks, chunks=12, ms=2000)
        deadline = time.monotonic() + 20
        while True:  # past the threshold: its writer holds the budget
            progress = json.loads(call(port, "GET", location)[2])["progress"]
            if progress and progress["message"].startswith("spooling pid="):
                worker = int(progress["message"].rpartition("=")[2])
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert worker != master.pid
        status, _, body = call(port, "POST", "/work/quick")
        assert status == 503 and b"full" in body, (status, body)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()

        # No poll of the killed task: only submissions.
        while True:
            status, _, body = call(port, "POST", "/work/quick")
            if status == 202:
                break
            assert status == 503, body
            assert time.monotonic() - killed < LEASE + 10, "the byte budget stayed spent"
            time.sleep(0.2)
        accepted = time.monotonic() - killed
        called = _called_back_once_as_lost(receiver, task_id, killed)
        kind = store_url.partition(":")[0]
        print(
            f"\n[{kind}{', preload' if preload else ''}] after the kill: "
            f"a submission accepted in {accepted:.1f} s, "
            f"the lost callback in {called:.1f} s"
        )
        assert accepted < LEASE + 5
        status, _, body = call(port, "GET", location)
        assert status == 500 and b"lost" in body, (status, body)


@pytest.mark.parametrize("preload", [False, True], ids=["imported-in-workers", "preload"])
def test_a_lost_callback_goes_with_no_request_at_all(
    tmp_path: Path,
    store_url: str,  # noqa: F811 (the fixture imported above)
    preload: bool,
) -> None:
    """The only worker is SIGKILLed with a task under way; gunicorn forks a
    new one, and nothing is ever sent to it. Its sweeper ends the task as
    lost, and its callback sender, running from the start, sends the "lost"
    callback: a process need not have served a request to send callbacks."""
    receiver = Receiver()
    with _spooling(tmp_path, store_url, receiver, workers=1, preload=preload) as (
        hooks,
        port,
        master,
    ):
        _, task_id = _spool_called_back(port, hooks, chunks=40, ms=500)
        (worker,) = children(master.pid)
        time.sleep(0.5)  # the task is under way in that worker
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        # Not a single request from here on.
        called = _called_back_once_as_lost(receiver, task_id, killed)
        print(f"\n[{store_url.partition(':')[0]}] the lost callback {called:.1f} s after")


def _spool_called_back(port: int, hooks: str, *, chunks: int, ms: int) -> tuple[str, str]:
    """A spooling task (``chunks`` chunks, ``ms`` apart) whose callback goes
    to ``hooks``: its status URL and id."""
    status, headers, _ = post(
        port, f"/work/spool?chunks={chunks}&ms={ms}", {"Callback-URL": hooks + "lost"}
    )
    assert status == 202
    location = headers["Location"]
    return location, location.rsplit("/", 1)[1]


def _called_back_once_as_lost(receiver: Receiver, task_id: str, killed: float) -> float:
    """Seconds from the kill until the task's "lost" callback came; it came
    once (a few seconds more for a second delivery, which must not come)."""
    while not receiver.deliveries:
        assert time.monotonic() - killed < LEASE + 20, "no lost callback"
        time.sleep(0.05)
    called = time.monotonic() - killed
    time.sleep(3)
    assert [d.headers["webhook-id"] for d in receiver.deliveries] == [task_id]
    assert json.loads(receiver.deliveries[0].body)["status"] == 500
    return called
