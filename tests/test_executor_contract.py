"""The executor contract: what every engine guarantees, written once and run
against each with real workers.

Engines: the thread pool (in the gunicorn workers), Celery (``celery
worker``), RQ (``rq worker``), Django Tasks on django-tasks-db's database
backend (``db_worker`` on SQLite, with the SQLite task store: no Redis in
the path of a task) and on django-tasks-rq's RQ backend (``rqworker``).
Each engine gets its own redis-server, two worker slots and gunicorn with
two web processes serving ``tests/apps/engines.py``; the test talks HTTP
with a fresh connection per request, so polls land on either web process.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bench.services import RedisServer, free_port, stop_group, terminate
from tests.helpers import unavailable

ROOT = Path(__file__).resolve().parent.parent
LEASE = 2.0
SLOTS = 2  # tasks each engine runs at once
# What each engine needs installed, besides redis-server and gunicorn.
NEEDS = {
    "thread": [],
    "celery": ["celery"],
    "rq": ["rq"],
    "django-db": ["django", "django_tasks", "django_tasks_db"],
    "django-rq": ["django", "django_tasks", "django_rq", "django_tasks_rq"],
}
REMOTE = ("celery", "rq", "django-db", "django-rq")

pytestmark = pytest.mark.slow


def _missing(what: str) -> None:
    unavailable(f"{what} is not installed")


class Web:
    """HTTP to the gunicorn server, a fresh connection per request."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def submit(self, path: str, body: bytes = b"", **kw: Any) -> str:
        status, headers, answer = self.request("POST", path, body, **kw)
        assert status == 202, (status, answer)
        return headers["Location"]

    def wait(self, location: str, timeout: float = 20.0) -> tuple[int, dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        while True:
            status, headers, body = self.request("GET", location)
            if status != 202:
                return status, headers, body
            if time.monotonic() > deadline:
                raise AssertionError(f"{location} still 202 after {timeout}s")
            time.sleep(0.02)

    def state(self, location: str) -> dict[str, Any]:
        status, _, body = self.request("GET", location)
        assert status == 202, (status, body)
        document: dict[str, Any] = json.loads(body)
        return document

    def until(self, location: str, state: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (document := self.state(location))["state"] != state:
            assert time.monotonic() < deadline, document
            time.sleep(0.02)
        return document


class Engine:
    """One engine's running services: redis-server, its workers, gunicorn."""

    def __init__(self, name: str, workdir: str) -> None:
        self.name = name
        self.redis = RedisServer(shutil.which("redis-server") or "redis-server")
        self.records_url = self.redis.url(0)
        store = f"sqlite:///{workdir}/tasks.db" if name == "django-db" else self.redis.url(1)
        self.env = {
            **os.environ,
            "ASYNCWSGI_TEST_ENGINE": name,
            "ASYNCWSGI_TEST_REDIS": self.records_url,
            "ASYNCWSGI_TEST_STORE": store,
            "ASYNCWSGI_TEST_LEASE": str(LEASE),
            "ASYNCWSGI_TEST_DJANGO_DB": f"{workdir}/django.db",
            "DJANGO_SETTINGS_MODULE": "tests.apps.engines_settings",
            "PYTHONPATH": str(ROOT),
            # No "running as root" warnings from the workers.
            "PYTHONWARNINGS": "ignore",
        }
        self.workers: list[subprocess.Popen[bytes]] = []
        self.gunicorn: subprocess.Popen[bytes] | None = None
        import redis

        self.records = redis.Redis.from_url(self.records_url)

    def start(self) -> None:
        if self.name.startswith("django"):
            subprocess.run(
                [sys.executable, "-m", "django", "migrate", "-v", "0"],
                cwd=ROOT, env=self.env, check=True, timeout=120,
            )  # fmt: skip
        if self.name != "thread":
            for _ in range(SLOTS if self.name != "celery" else 1):
                self.start_worker()
        port = free_port()
        self.gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
             "-c", "python:tests.gunicorn_conf", "tests.apps.engines:application"],
            cwd=ROOT, env=self.env,
        )  # fmt: skip
        self.web = Web(port)
        deadline = time.monotonic() + 60
        while True:
            assert self.gunicorn.poll() is None, "gunicorn exited"
            for worker in self.workers:
                assert worker.poll() is None, f"{worker.args} exited"
            try:
                self.web.request("GET", "/pid")
                # Both web processes booted: the first answer may come before
                # the second worker is forked, and the contract counts them.
                if len(self.web_pids()) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer with two workers"
            time.sleep(0.1)
        # The workers consume: a first task of each slot completes.
        for i in range(SLOTS):
            status, _, _ = self.web.wait(self.web.submit(f"/task/echo?marker=warmup{i}"), 60)
            assert status == 200

    def worker_command(self, queue: str = "asyncwsgi") -> list[str]:
        py = sys.executable
        if self.name == "celery":
            return [py, "-m", "celery", "-A", "tests.apps.engines:celery_app", "worker",
                    "-Q", queue, "-n", f"{queue}@%h", "--concurrency", str(SLOTS),
                    "--loglevel", "warning",
                    "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        if self.name == "rq":
            return [py, "-m", "rq.cli", "worker", "-w", "asyncwsgi.executors.rq.Worker",
                    "-u", self.records_url, queue, "--logging_level", "WARNING"]  # fmt: skip
        if self.name == "django-db":
            return [py, "-m", "django", "db_worker", "--queue-name", queue,
                    "--interval", "0.05", "--no-startup-delay", "-v", "0"]  # fmt: skip
        if self.name == "django-rq":
            return [py, "-m", "django", "rqworker", queue,
                    "--job-class", "django_tasks_rq.Job"]  # fmt: skip
        raise AssertionError("the thread pool runs in the web processes")

    def start_worker(self, queue: str | None = None) -> subprocess.Popen[bytes] | None:
        """A worker for the engine's queue (kept, stopped at teardown), or
        for ``queue`` (returned: the caller stops it)."""
        if self.name == "thread":
            return None
        worker = subprocess.Popen(
            self.worker_command() if queue is None else self.worker_command(queue),
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        if queue is None:
            self.workers.append(worker)
        return worker

    def owns(self, pid: int, ppid: int) -> bool:
        """Whether ``pid`` (whose parent is ``ppid``) is one of this engine's
        worker processes, or a child of one."""
        if self.name == "thread":
            assert self.gunicorn is not None
            return ppid == self.gunicorn.pid
        ours = {worker.pid for worker in self.workers}
        return pid in ours or ppid in ours

    def web_pids(self) -> set[int]:
        """The gunicorn workers (asking /pid may reach only one of them)."""
        assert self.gunicorn is not None
        tasks = Path(f"/proc/{self.gunicorn.pid}/task")
        return {
            int(pid) for task in tasks.iterdir() for pid in (task / "children").read_text().split()
        }

    def runs(self) -> list[str]:
        return [item.decode() for item in self.records.lrange("runs", 0, -1)]

    def replace_dead_workers(self) -> None:
        alive = [worker for worker in self.workers if worker.poll() is None]
        dead = len(self.workers) - len(alive)
        self.workers = alive
        for _ in range(dead if self.name != "thread" else 0):
            self.start_worker()

    def stop(self) -> None:
        try:
            if self.gunicorn is not None:
                terminate(self.gunicorn, 15)
            for worker in self.workers:
                stop_group(worker)
        finally:
            self.records.close()
            self.redis.stop()


@pytest.fixture(scope="module", params=list(NEEDS))
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    if shutil.which("redis-server") is None:
        _missing("redis-server")
    for module in ["gunicorn", "redis", *NEEDS[request.param]]:
        if importlib.util.find_spec(module) is None:
            _missing(module)
    with tempfile.TemporaryDirectory(prefix="asyncwsgi-engine-") as workdir:
        running = Engine(request.param, workdir)
        try:
            running.start()
            yield running
        finally:
            running.stop()


# -- the contract ------------------------------------------------------------


def test_a_task_runs_once_on_the_engine_with_the_same_environ_and_body(engine: Engine) -> None:
    web = engine.web
    web_pids = engine.web_pids()
    assert len(web_pids) == 2
    body = bytes(range(256)) * 4
    headers = {"Content-Type": "application/octet-stream", "X-Custom": "a, b", "Cookie": "c=1"}
    path = "/echo?x=1&y=%20two&marker="

    direct_status, _, direct = web.request("POST", path + "direct", body, headers)
    assert direct_status == 200
    expected = json.loads(direct)
    assert expected["task"] is False

    def one(i: int) -> dict[str, Any]:
        marker = f"same{i}"
        location = web.submit(path + marker, body, headers={**headers, "Prefer": "respond-async"})
        status, _, answer = web.wait(location)
        assert status == 200, (status, answer)
        document: dict[str, Any] = json.loads(answer)
        document["marker"] = marker
        return document

    with ThreadPoolExecutor(4) as pool:
        documents = list(pool.map(one, range(8)))

    volatile = {"REMOTE_PORT", "HTTP_PREFER", "QUERY_STRING", "RAW_URI"}
    for document in documents:
        assert document["task"] is True
        assert document["body_sha256"] == expected["body_sha256"]
        assert document["body_length"] == len(body)
        seen = {k: v for k, v in document["environ"].items() if k not in volatile}
        wanted = {k: v for k, v in expected["environ"].items() if k not in volatile}
        assert seen == wanted
        assert document["environ"]["QUERY_STRING"] == f"x=1&y=%20two&marker={document['marker']}"
        # On the engine's worker: not in a web process, unless the engine is
        # the thread pool, whose workers are the web processes.
        assert engine.owns(document["pid"], document["ppid"]), document
        assert (document["pid"] in web_pids) == (engine.name == "thread")
    runs = engine.runs()
    for document in documents:
        assert runs.count(document["marker"]) == 1


def test_progress_and_the_result_from_any_web_process(engine: Engine) -> None:
    web = engine.web
    location = web.submit("/task/progress?marker=p1")
    answered_by: set[str] = set()
    deadline = time.monotonic() + 15
    while True:
        status, headers, body = web.request("GET", location)
        assert status == 202, (status, body)
        answered_by.add(headers["X-Web-Pid"])
        document = json.loads(body)
        if document["progress"] is not None and len(answered_by) == 2:
            break
        assert time.monotonic() < deadline, (document, answered_by)
        time.sleep(0.01)
    assert document["state"] == "running"
    assert document["progress"] == {"done": 1, "total": 3, "message": "step 1 of 3"}

    engine.records.set("release:p1", 1)
    status, _, first = web.wait(location)
    assert status == 200 and json.loads(first)["released"] is True
    answered_by.clear()
    while len(answered_by) < 2:
        status, headers, body = web.request("GET", location)
        assert (status, body) == (200, first)
        answered_by.add(headers["X-Web-Pid"])
        assert time.monotonic() < deadline + 10


def test_a_running_task_sees_its_delete(engine: Engine) -> None:
    web = engine.web
    location = web.submit("/task/cancel?marker=c1")
    web.until(location, "running")
    assert web.request("DELETE", location)[0] == 204
    deadline = time.monotonic() + 10
    while not engine.records.exists("saw-cancel:c1"):
        assert time.monotonic() < deadline, "the app never saw the DELETE"
        time.sleep(0.02)
    assert web.request("GET", location)[0] == 404


def _fill_slots(engine: Engine, prefix: str) -> list[str]:
    """Holding tasks until every slot of the engine runs one (with the thread
    pool, submissions land on either web process: keep adding until both
    run one); the markers, to release them."""
    web = engine.web
    markers: list[str] = []
    locations: list[str] = []
    deadline = time.monotonic() + 20
    while True:
        marker = f"{prefix}{len(markers)}"
        markers.append(marker)
        locations.append(web.submit(f"/task/hold?marker={marker}"))
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle:
            running = sum(web.state(loc)["state"] == "running" for loc in locations)
            if running >= SLOTS or (running == len(locations) and len(locations) < SLOTS):
                break
            time.sleep(0.02)
        if running >= SLOTS:
            return markers
        assert time.monotonic() < deadline, "the engine's slots never filled"


def _release(engine: Engine, markers: list[str]) -> None:
    for marker in markers:
        engine.records.set(f"release:{marker}", 1)


def test_a_deleted_queued_task_never_runs(engine: Engine) -> None:
    web = engine.web
    blockers = _fill_slots(engine, "busy")
    try:
        victim = web.submit("/task/echo?marker=victim")
        time.sleep(0.2)
        assert web.state(victim)["state"] == "queued"
        assert web.request("DELETE", victim)[0] == 204
        assert web.request("GET", victim)[0] == 404
    finally:
        _release(engine, blockers)
    # Tasks queued after it complete: the worker went past the deleted one.
    after = [web.submit(f"/task/echo?marker=after{i}") for i in range(SLOTS)]
    for location in after:
        assert web.wait(location)[0] == 200
    time.sleep(0.5)
    runs = engine.runs()
    assert all(marker in runs for marker in blockers)
    assert "victim" not in runs
    assert web.request("GET", victim)[0] == 404


# Accepts one task with the options given (JSON), then dies at once (no
# close(), no atexit): its own watchdog goes with it, so only the engine (or
# another web process) can end the task.
_ACCEPT_AND_VANISH = """
import json, os, sys, time
from werkzeug.test import Client
from asyncwsgi import AsyncMiddleware
from tests.apps import engines

options = json.loads(sys.argv[1])
executor = engines.make_executor(options.pop("queue", engines.QUEUE), kill_after=1.0)
path = options.pop("path")
accepting = AsyncMiddleware(engines.app, paths=["/task/*"], store=engines.STORE,
                            lease=engines.LEASE, executor=executor, **options)
submitted = time.monotonic()
response = Client(accepting).post(path)
print(response.status_code, response.headers["Location"], submitted, flush=True)
os._exit(0)
"""


def _accept_and_vanish(engine: Engine, **options: Any) -> tuple[str, float]:
    """Accept a task in a process that is gone once this returns; its status
    URL and the moment it was submitted. That moment is the other process's
    ``time.monotonic()``: one clock for every process on Linux, so a bound
    counts from the submission, not from starting Python and importing."""
    out = subprocess.run(
        [sys.executable, "-c", _ACCEPT_AND_VANISH, json.dumps(options)],
        cwd=ROOT, env=engine.env, capture_output=True, timeout=60, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    status, location, submitted = out.stdout.split()
    assert status == "202", out.stdout
    return location, float(submitted)


def test_timeout_holds_when_the_accepting_process_is_gone(engine: Engine) -> None:
    timeout = 1.0
    location, submitted = _accept_and_vanish(
        engine, path="/task/hang?seconds=4&marker=t1", timeout=timeout
    )
    status, _, body = engine.web.wait(location, timeout=timeout + LEASE + 10)
    elapsed = time.monotonic() - submitted
    if engine.name == "thread":
        # The thread pool held the task in the process that is gone: the task
        # is lost with it, and answered as such once its lease passes: 500 if
        # it had started, 503 "not started in time" if it was still queued.
        assert (status, b"lost" in body) == (500, True) or (
            status,
            b"not started in time" in body,
        ) == (503, True), (status, body)
        assert elapsed <= LEASE + 5, elapsed
    else:
        assert status == 504 and b"timeout" in body, (status, body)
        assert elapsed <= timeout + 4, elapsed
    # The engine goes on (the hanging app ends within 4 s, or is stopped).
    location = engine.web.submit("/task/echo?marker=t2")
    assert engine.web.wait(location, timeout=15)[0] == 200


# Not for the thread pool: its queue is in the accepting process, and gone with
# it its tasks are lost (the killed-worker case), not waiting anywhere.
@pytest.mark.parametrize("engine", REMOTE, indirect=True)
def test_queue_timeout_holds_when_the_accepting_process_is_gone(engine: Engine) -> None:
    queue_timeout = 1.0
    location, submitted = _accept_and_vanish(
        engine, path="/task/echo?marker=stale", queue="idle", queue_timeout=queue_timeout
    )
    status, _, body = engine.web.wait(location, timeout=queue_timeout + 10)
    assert status == 503 and b"not started" in body, (status, body)
    assert time.monotonic() - submitted <= queue_timeout + 4
    # A worker that comes for the queue later never runs it: the queue is
    # first-in first-out, so once a task queued after it is done, it was skipped.
    witness, _ = _accept_and_vanish(engine, path="/task/echo?marker=witness", queue="idle")
    worker = engine.start_worker("idle")
    assert worker is not None
    try:
        assert engine.web.wait(witness, timeout=30)[0] == 200
    finally:
        stop_group(worker)
    assert "stale" not in engine.runs()
    assert engine.web.request("GET", location)[0] == 503


def test_a_killed_worker_leaves_no_task_at_202_beyond_the_lease(engine: Engine) -> None:
    web = engine.web
    location = web.submit("/task/hang?seconds=30&marker=k1")
    deadline = time.monotonic() + 15
    while (pid := engine.records.get("pid:k1")) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victim = int(pid)
    ppid = int(Path(f"/proc/{victim}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert engine.owns(victim, ppid)  # only a process of the engine we started
    assert web.state(location)["state"] == "running"
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    status, _, body = web.wait(location, timeout=LEASE + 10)
    assert status == 500 and b"lost" in body, (status, body)
    assert time.monotonic() - killed <= LEASE + 4
    engine.replace_dead_workers()
    assert web.wait(web.submit("/task/echo?marker=k2"), timeout=30)[0] == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_and_chunked_bodies_arrive(engine: Engine, chunked: bool) -> None:
    body = os.urandom(3 * 2**20)
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    location = engine.web.submit(
        "/task/echo?marker=big", pieces if chunked else body, chunked=chunked
    )
    status, _, answer = engine.web.wait(location, timeout=30)
    assert status == 200
    document = json.loads(answer)
    assert document["body_length"] == len(body)
    assert document["body_sha256"] == hashlib.sha256(body).hexdigest()
