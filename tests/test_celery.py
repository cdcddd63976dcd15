"""CeleryExecutor: tasks accepted by gunicorn run on a real Celery worker.

The end-to-end tests run a real redis-server (broker and store), a Celery
worker (``--concurrency 2``) and gunicorn (``-w 2``) serving
``tests/apps/celery_web.py``, and talk HTTP to it with a fresh connection per
request, so that polls land on either web process.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from bench.services import free_port, stop_group
from tests.helpers import need, redis_db

ROOT = Path(__file__).resolve().parent.parent
LEASE = 2.0


def _need(module: str) -> None:
    need(module)


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


# -- without services --------------------------------------------------------


def test_memory_store_is_refused() -> None:
    _need("celery")
    from celery import Celery

    from asyncwsgi.executors.celery import CeleryExecutor

    executor = CeleryExecutor(Celery("refused"), "tests.test_celery:_wsgi_app")
    with pytest.raises(ValueError, match="shared store"):
        AsyncMiddleware(_wsgi_app, paths=["/x"], executor=executor)


def test_registers_the_task_and_refuses_a_second_app() -> None:
    _need("celery")
    from celery import Celery

    from asyncwsgi.executors.celery import TASK_NAME, CeleryExecutor

    celery_app = Celery("registers")
    CeleryExecutor(celery_app, "tests.test_celery:_wsgi_app")
    CeleryExecutor(celery_app, "tests.test_celery:_wsgi_app")  # same app: fine
    assert TASK_NAME in celery_app.tasks
    with pytest.raises(ValueError, match="one Celery app per WSGI application"):
        CeleryExecutor(celery_app, "tests.test_celery:other")


_wrapped = AsyncMiddleware(AsyncMiddleware(_wsgi_app, paths=["/x"]), paths=["/y"])


def test_worker_unwraps_the_middleware() -> None:
    _need("celery")
    from asyncwsgi.executors.worker import load_app

    assert load_app("tests.test_celery:_wrapped") is _wsgi_app
    assert load_app("tests.test_celery._wsgi_app") is _wsgi_app
    with pytest.raises(TypeError):
        load_app("tests.test_celery:LEASE")


def test_only_json_safe_environ_crosses() -> None:
    _need("celery")
    from asyncwsgi.environ import json_environ

    sent = json_environ(
        {
            "PATH_INFO": "/x",
            "HTTP_X": "é",
            "wsgi.url_scheme": "https",
            "wsgi.multiprocess": True,
            "wsgi.version": (1, 0),
            "outer.object": object(),
        }
    )
    assert sent == {
        "PATH_INFO": "/x",
        "HTTP_X": "é",
        "wsgi.url_scheme": "https",
        "wsgi.multiprocess": True,
    }
    assert json.loads(json.dumps(sent)) == sent


def test_the_message_headers_carry_no_copy_of_the_request(redis_url: str) -> None:
    """Celery copies a repr of a task's arguments into the message headers
    (``argsrepr``), which monitors and logs show: for the job that would be
    the whole environ, credentials included, formatted again on every
    submission. The job travels once, in the body; the headers name it."""
    _need("celery")
    import redis
    from celery import Celery

    from asyncwsgi.executors.celery import CeleryExecutor
    from asyncwsgi.job import Job

    broker, store = redis_db(redis_url, 8), redis_db(redis_url, 9)
    queue = redis.Redis.from_url(broker)
    queue.flushdb()
    executor = CeleryExecutor(Celery("headers", broker=broker), "tests.test_celery:_wsgi_app")
    middleware = AsyncMiddleware(_wsgi_app, paths=["/x/*"], store=store, executor=executor)
    try:
        secret = "Bearer s3cret-token"
        response = Client(middleware).post(
            "/x/report?year=2026", data=b"payload", headers={"Authorization": secret}
        )
        assert response.status_code == 202
        (raw,) = queue.lrange("celery", 0, -1)
        envelope = json.loads(raw)
        headers = envelope["headers"]
        assert headers["task"] == "asyncwsgi.run"
        assert secret not in json.dumps(headers)
        assert headers["argsrepr"] == "(<asyncwsgi job POST /x/report>,)"
        assert headers["kwargsrepr"] == "{}"
        # The job itself crosses whole in the body, once.
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        assert kwargs == {}
        job = Job.decode(args[0], lambda url, max_stored_bytes: middleware.store)
        assert job.environ["HTTP_AUTHORIZATION"] == secret
        assert job.body == b"payload"
        assert raw.count(b"s3cret-token") == 0  # base64 in the body, never in clear
    finally:
        middleware.close(5)
        queue.flushdb()
        queue.close()


# -- end to end ----------------------------------------------------------------


class Web:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def submit(self, path: str, body: bytes = b"") -> str:
        status, headers, _ = self.request("POST", path, body)
        assert status == 202, status
        return headers["Location"]

    def wait(self, location: str, timeout: float = 20.0) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            status, _, body = self.request("GET", location)
            if status != 202:
                return status, body
            if time.monotonic() > deadline:
                raise AssertionError(f"{location} still 202 after {timeout}s")
            time.sleep(0.02)

    def state(self, location: str) -> dict[str, Any]:
        status, _, body = self.request("GET", location)
        assert status == 202, (status, body)
        document: dict[str, Any] = json.loads(body)
        return document


class Services:
    def __init__(
        self, web: Web, worker: subprocess.Popen[bytes], records: Any, env: dict[str, str]
    ) -> None:
        self.web = web
        self.worker = worker
        self.records = records
        self.env = env

    def runs(self) -> list[str]:
        return [item.decode() for item in self.records.lrange("asyncwsgi-test:runs", 0, -1)]


@pytest.fixture(scope="module")
def services(redis_url: str) -> Iterator[Services]:
    _need("celery")
    _need("gunicorn")
    import redis

    broker, store = redis_db(redis_url, 12), redis_db(redis_url, 13)
    records = redis.Redis.from_url(broker)
    records.flushdb()
    with redis.Redis.from_url(store) as flushing:
        flushing.flushdb()
    env = {
        **os.environ,
        "ASYNCWSGI_TEST_BROKER": broker,
        "ASYNCWSGI_TEST_STORE": store,
        "ASYNCWSGI_TEST_LEASE": str(LEASE),
        "PYTHONPATH": str(ROOT),
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.apps.celery_web:celery_app",
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
        start_new_session=True,
    )
    port = free_port()
    gunicorn = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "-c",
            "python:tests.gunicorn_conf",
            "tests.apps.celery_web:application",
        ],
        cwd=ROOT,
        env=env,
    )
    web = Web(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert gunicorn.poll() is None, "gunicorn exited"
            assert worker.poll() is None, "celery worker exited"
            try:
                web.request("GET", "/pid")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        # The worker consumes: a first task completes.
        status, _ = web.wait(web.submit("/task/echo?marker=warmup"), timeout=30)
        assert status == 200
        yield Services(web, worker, records, env)
    finally:
        gunicorn.terminate()
        try:
            gunicorn.wait(15)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
            gunicorn.wait()
        stop_group(worker)
        records.close()


@pytest.mark.slow
def test_200_tasks_run_in_celery_workers(services: Services) -> None:
    web = services.web
    web_pids = {json.loads(web.request("GET", "/pid")[2])["pid"] for _ in range(20)}
    assert web_pids and os.getpid() not in web_pids

    def one(i: int) -> dict[str, Any]:
        location = web.submit(f"/task/echo?marker=a{i}", f"payload {i}".encode())
        status, body = web.wait(location, timeout=40)
        assert status == 200, (status, body)
        document: dict[str, Any] = json.loads(body)
        document["location"] = location
        return document

    with ThreadPoolExecutor(16) as pool:
        documents = list(pool.map(one, range(200)))

    worker_pids = set()
    for i, document in enumerate(documents):
        assert document["marker"] == f"a{i}"
        assert document["body"] == f"payload {i}"
        task_id = document["location"].rsplit("/", 1)[1]
        # Run by Celery, as the Celery task of the same id, in a worker process.
        assert document["task_id"] == task_id
        assert document["celery_task_id"] == task_id
        assert "celery" in document["argv0"]
        assert document["pid"] not in web_pids
        worker_pids.add(document["pid"])
    assert 1 <= len(worker_pids) <= 2  # --concurrency 2
    runs = services.runs()
    assert all(runs.count(f"a{i}") == 1 for i in range(200))


@pytest.mark.slow
def test_progress_from_the_worker(services: Services) -> None:
    web = services.web
    location = web.submit("/task/progress?marker=p1")
    deadline = time.monotonic() + 15
    while True:
        document = web.state(location)
        if document["progress"] is not None:
            break
        assert time.monotonic() < deadline, document
        time.sleep(0.02)
    assert document["state"] == "running"
    assert document["progress"] == {"done": 1, "total": 3, "message": "step 1 of 3"}
    services.records.set("asyncwsgi-test:release:p1", 1)
    status, body = web.wait(location)
    assert status == 200
    assert json.loads(body)["finished"] is True


@pytest.mark.slow
def test_deleted_queued_task_never_runs(services: Services) -> None:
    web = services.web
    # Both worker processes busy with slow tasks...
    slow = [web.submit(f"/task/slow?marker=busy{i}&seconds=2") for i in range(2)]
    deadline = time.monotonic() + 15
    while not all(web.state(loc)["state"] == "running" for loc in slow):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # ...so that the next one waits in the queue, where it is deleted.
    victim = web.submit("/task/echo?marker=victim")
    assert web.state(victim)["state"] == "queued"
    status, _, _ = web.request("DELETE", victim)
    assert status == 204
    assert web.request("GET", victim)[0] == 404
    for location in slow:
        assert web.wait(location)[0] == 200
    # A task queued after it completes: the worker went past the deleted one.
    after = web.submit("/task/echo?marker=after")
    assert web.wait(after)[0] == 200
    time.sleep(0.5)
    runs = services.runs()
    assert "after" in runs and "busy0" in runs and "busy1" in runs
    assert "victim" not in runs
    assert web.request("GET", victim)[0] == 404


@pytest.mark.slow
def test_killed_worker_fails_its_task_within_the_lease(services: Services) -> None:
    web = services.web
    location = web.submit("/task/hang?marker=k1")
    deadline = time.monotonic() + 15
    while (pid := services.records.get("asyncwsgi-test:pid:k1")) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child = int(pid)
    # Only a process of the worker we started: its pool child.
    ppid = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert ppid == services.worker.pid
    assert web.state(location)["state"] == "running"
    killed = time.monotonic()
    os.kill(child, signal.SIGKILL)
    status, body = web.wait(location, timeout=LEASE + 5)
    elapsed = time.monotonic() - killed
    assert status == 500
    assert b"lost" in body
    assert elapsed <= LEASE + 3, elapsed
    # The worker replaced its child and goes on.
    assert web.wait(web.submit("/task/echo?marker=k2"))[0] == 200


# Accepts one hanging task with a timeout, then dies at once (no close(), no
# atexit): its own watchdog goes with it, so only the worker can end the task.
_ACCEPT_AND_VANISH = """
import os, sys
from werkzeug.test import Client
from asyncwsgi import AsyncMiddleware
from asyncwsgi.executors.celery import CeleryExecutor
from tests.apps import celery_web as web

timeout, kill_after, marker = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
executor = CeleryExecutor(web.celery_app, "tests.apps.celery_web:application",
                          kill_after=kill_after)
accepting = AsyncMiddleware(web.app, paths=["/task/*"], store=web.STORE, lease=web.LEASE,
                            timeout=timeout, executor=executor)
response = Client(accepting).post("/task/hang?marker=" + marker)
print(response.status_code, response.headers["Location"], flush=True)
os._exit(0)
"""


@pytest.mark.slow
def test_timeout_is_kept_by_the_worker_when_the_accepting_process_is_gone(
    services: Services,
) -> None:
    timeout, kill_after = 1.0, 2.0
    accepted = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _ACCEPT_AND_VANISH, str(timeout), str(kill_after), "t1"],
        cwd=ROOT, env=services.env, capture_output=True, check=True, timeout=30,
    ).stdout.decode().split()  # fmt: skip
    assert out[0] == "202", out
    location = out[1]

    status, body = services.web.wait(location, timeout=timeout + 10)
    assert status == 504, (status, body)
    assert b"timeout" in body
    assert time.monotonic() - accepted <= timeout + 5

    # The app never returns by itself (it sleeps 60 s): Celery's hard limit
    # ends the worker's child that runs it, and the worker goes on.
    pid = services.records.get("asyncwsgi-test:pid:t1")
    assert pid is not None
    stat = Path(f"/proc/{int(pid)}/stat")
    deadline = time.monotonic() + timeout + kill_after + 10
    while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the hanging worker child was not stopped"
        time.sleep(0.1)
    assert services.web.wait(services.web.submit("/task/echo?marker=t2"))[0] == 200
    assert services.web.request("GET", location)[0] == 504
