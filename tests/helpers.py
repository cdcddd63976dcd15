"""Shared test helpers: polling through a werkzeug test client, a real server."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest
from werkzeug.serving import make_server
from werkzeug.test import Client, TestResponse

from bench.services import stop_group

ROOT = Path(__file__).resolve().parent.parent


def unavailable(reason: str) -> NoReturn:
    """Something a test needs is missing: skipped on a developer's machine, a
    failure in CI (``CI=true``), where .ci/run installs everything."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason, allow_module_level=True)


def need(*modules: str, programs: tuple[str, ...] = ()) -> None:
    """Python modules and programs on PATH a test needs (see ``unavailable``)."""
    missing = [m for m in modules if not _importable(m)]
    missing += [p for p in programs if shutil.which(p) is None]
    if missing:
        unavailable(f"not installed: {', '.join(missing)}")


def program(name: str) -> str:
    """The path of a program a test runs (see ``unavailable``)."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed")
    return path


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


@contextmanager
def small_disk(parent: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"4m"``) mounted at ``parent/small``: a disk that
    fills (mounting needs root, as CI has; see ``unavailable``)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        unavailable("a full disk needs root to mount a tmpfs")
    mount = parent / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def wait_done(client: Client, location: str, timeout: float = 10.0, **kw: Any) -> TestResponse:
    """Poll a status URL until it answers the task's result.

    The middleware's own 202 always points ``Location`` at the status URL; a
    202 without that is the app's result (an app may answer 202 itself).
    Each 202 is closed before the next poll, as a server closes a response
    before the next request on its thread: a middleware around the app (such
    as OpenTelemetry's) may hold per-thread state until then.
    """
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(location, **kw)
        if response.status_code != 202 or not response.headers.get("Location", "").endswith(
            location
        ):
            return response
        response.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"task at {location} still 202 after {timeout}s")
        time.sleep(0.005)


def redis_db(url: str, db: int) -> str:
    """The URL of database ``db`` of the Redis at ``url``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def emptied_dbs(url: str, *dbs: int) -> list[str]:
    """The URLs of the databases ``dbs`` of the Redis at ``url``, emptied."""
    import redis

    urls = [redis_db(url, db) for db in dbs]
    for each in urls:
        with redis.Redis.from_url(each) as client:
            client.flushdb()
    return urls


def wait_for(condition: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    """Whether ``condition()`` came true within ``timeout`` seconds (for what a
    background thread does just after a client could see its effect)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


@contextmanager
def serving(app: Any, threaded: bool = True) -> Iterator[str]:
    """Serve ``app`` with werkzeug's server on 127.0.0.1 and a free port."""
    server = make_server("127.0.0.1", 0, app, threaded=threaded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def captured_headers(
    headers: list[tuple[str, str]], sent: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The headers of a replayed response without those the replay adds after
    the captured ones: ``Content-Length`` when the app (which ``sent`` its
    headers) framed its body neither way, then for a 200
    ``Accept-Ranges: bytes`` and ``ETag`` unless the app set validators."""
    headers = list(headers)
    if len(headers) >= 2 and headers[-1][0] == "ETag" and headers[-2] == _RANGES:
        del headers[-2:]
    elif headers and headers[-1] == _RANGES:
        del headers[-1]  # the app set its own validators
    framed = any(name.lower() in ("content-length", "transfer-encoding") for name, _ in sent)
    if not framed and headers and headers[-1][0] == "Content-Length":
        del headers[-1]
    return headers


_RANGES = ("Accept-Ranges", "bytes")


@contextmanager
def rq_worker(
    url: str,
    queue: str = "reports",
    worker_class: str = "asyncwsgi.executors.rq.Worker",
    env: dict[str, str] | None = None,
    logging_level: str = "WARNING",
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``rq worker`` on ``queue``, stopped when the block ends.

    Never ``--burst``: rq's burst exit can hang in its teardown (its pubsub
    thread's join, rq issue 1613), so the test waits for its tasks' answers
    instead and then ends the worker and its work horses itself, with a
    bounded grace (SIGTERM, then SIGKILL to the whole group)."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", "-w", worker_class, "-u", url, queue,
         "--logging_level", logging_level],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", **(env or {})},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if logging_level == "CRITICAL" else None,
    )  # fmt: skip
    try:
        yield worker
    finally:
        # SIGTERM to the worker alone is rq's warm shutdown: a work horse
        # still finishing its job (and its last writes) is let finish.
        if worker.poll() is None:
            worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            pass
        stop_group(worker, timeout=0)


@contextmanager
def celery_worker(
    app: str, queue: str, log: Path, loglevel: str = "warning", threads: int = 0
) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker for ``app`` (``module:attr``) on ``queue``, one
    task at a time (the solo pool) unless ``threads`` asks for a pool of
    threads, its output in ``log``; it and its process group are stopped when
    the block ends."""
    pool = ["--concurrency", str(threads), "--pool", "threads"] if threads else \
        ["--concurrency", "1", "--pool", "solo"]  # fmt: skip
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, *pool,
             "--loglevel", loglevel,
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"},
            stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    try:
        yield worker
    finally:
        stop_group(worker, timeout=10)


def budget_holds(
    client: Client,
    middleware: Any,
    locations: tuple[str, str],
    whole: bytes,
    timeout: float = 60.0,
    log: Path | None = None,
) -> None:
    """What a worker in another process must do with the web side's byte
    budget (``max_stored_bytes`` 3 MiB, ``max_result`` 2 MiB + 4 KiB, two
    results of 2 MiB submitted): the first ends stored whole; the second
    waits for room meanwhile, new tasks get 503, and once the first is
    deleted the second ends whole too; the store never holds more."""
    budget = middleware.max_stored_bytes
    first, second = locations
    deadline = time.monotonic() + timeout

    def why() -> str:
        return log.read_text(errors="replace") if log is not None else ""

    while client.get(first).status_code == 202:
        assert time.monotonic() < deadline, why()
        time.sleep(0.05)
    assert client.get(first).get_data() == whole
    # The second waits for room: 2 MiB stored, 2 MiB + 4 KiB more would pass 3 MiB.
    for _ in range(40):
        assert client.get(second).status_code == 202
        assert middleware.store.stored_bytes <= budget
        time.sleep(0.05)
    assert client.post("/work/big").status_code == 503
    assert client.delete(first).status_code == 204
    while (late := client.get(second)).status_code == 202:
        assert time.monotonic() < deadline, why()
        time.sleep(0.05)
    assert late.status_code == 200
    assert late.get_data() == whole
    assert middleware.store.stored_bytes <= budget


class Clock:
    """A clock a test moves forward instead of sleeping: the real time plus
    what the test has added with :meth:`advance`. Given to a store as its
    ``clock``, it still passes with the real time, so what the test does not
    move (a thread's wait, a backend's own expiry) keeps its usual pace."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
