"""Prometheus metrics: what ``metrics_path`` answers, in one process and summed
over the workers of a real ``gunicorn -w 3`` on a shared SQLite store."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client

from asyncwsgi import SQLiteStore, TaskRecord
from bench.services import free_port
from tests.helpers import wait_done

ROOT = Path(__file__).resolve().parent.parent
# The tasks' pattern labels them (the tests mark paths=["/work/*"]).
ACCEPTED = 'asyncwsgi_tasks_accepted_total{pattern="/work/*"}'
RUN_COUNT = 'asyncwsgi_task_run_seconds_count{pattern="/work/*"}'


def parse(text: str) -> dict[str, float]:
    """Every sample of a scrape, keyed ``name{label="value",...}``."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def scrape(client: Client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return parse(response.get_data(as_text=True))


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    task = environ.get("asyncwsgi.task")
    if path == "/work/fail":
        raise RuntimeError("fails on purpose")
    if path == "/work/hold" and task is not None:
        deadline = time.monotonic() + 10
        while not task.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
    if path == "/work/sleep":
        time.sleep(0.5)
    body = b"x" * 300
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "300")])
    return [body]


# -- in one process ------------------------------------------------------------


def test_metrics_path_is_answered_by_the_middleware(wrap: Any) -> None:
    seen: list[str] = []

    def recording(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(environ["PATH_INFO"])
        return app(environ, start_response)

    client = Client(wrap(recording, metrics_path="/metrics", paths=["*"]))
    samples = scrape(client)
    assert 'asyncwsgi_tasks_accepted_total{pattern="*"}' in samples
    assert samples["asyncwsgi_store_up"] == 1
    assert client.head("/metrics").status_code == 200
    refused = client.post("/metrics")
    assert (refused.status_code, refused.headers["Allow"]) == (405, "GET, HEAD")
    assert seen == []  # not even with paths=["*"]
    assert client.get("/other").status_code == 202


def test_metrics_path_is_off_by_default(wrap: Any) -> None:
    client = Client(wrap(app))
    assert client.get("/metrics").status_code == 200  # the app's own answer
    assert wrap(app).metrics_path is None


def test_metrics_path_must_not_be_a_status_url() -> None:
    from asyncwsgi import AsyncMiddleware

    with pytest.raises(ValueError, match="metrics_path"):
        AsyncMiddleware(app, metrics_path="/status/metrics")


def test_counts_every_outcome(wrap: Any) -> None:
    middleware = wrap(
        app, metrics_path="/metrics", max_body=100, timeout=0.2, result_ttl=0.2, max_workers=4
    )
    client = Client(middleware)
    before = scrape(client)

    ok = [client.post("/work/ok").headers["Location"] for _ in range(3)]
    failed = client.post("/work/fail").headers["Location"]
    held = client.post("/work/hold").headers["Location"]
    slow = client.post("/work/sleep").headers["Location"]  # past the 0.2 s timeout
    assert client.post("/work/ok", data=b"y" * 101).status_code == 413
    for location in ok:
        assert wait_done(client, location).status_code == 200
    assert wait_done(client, failed).status_code == 500
    deadline = time.monotonic() + 10
    while client.get(held).json["state"] != "running":  # it runs, then is cancelled
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.delete(held).status_code == 204
    assert wait_done(client, slow).status_code == 504
    time.sleep(0.3)  # past result_ttl: the first result is gone
    assert client.get(ok[0]).status_code == 410

    # The timed-out app runs on past its 504; its run time counts when it ends.
    deadline = time.monotonic() + 5
    while (counted := delta(before, scrape(client)))[RUN_COUNT] < 6:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert counted[ACCEPTED] == 6
    assert counted['asyncwsgi_tasks_finished_total{status_class="2xx"}'] == 3
    assert counted['asyncwsgi_tasks_finished_total{status_class="5xx"}'] == 2
    assert counted["asyncwsgi_tasks_timed_out_total"] == 1
    assert counted["asyncwsgi_tasks_cancelled_total"] == 1
    assert counted['asyncwsgi_tasks_rejected_total{pattern="/work/*",reason="too_large"}'] == 1
    assert counted["asyncwsgi_expired_polls_total"] == 1
    assert counted['asyncwsgi_task_queue_wait_seconds_count{pattern="/work/*"}'] == 6
    assert counted[RUN_COUNT] == 6
    # The app's result (300 bytes) 3 times, the failure's and the timeout's
    # short error bodies: sizes, never contents.
    assert counted["asyncwsgi_task_result_bytes_count"] == 5
    assert counted['asyncwsgi_task_result_bytes_bucket{le="256.0"}'] == 2

    middleware.close()
    assert client.post("/work/ok").status_code == 503
    closed = 'asyncwsgi_tasks_rejected_total{pattern="/work/*",reason="closed"}'
    assert delta(before, scrape(client))[closed] == 1


def test_full_is_a_rejection(wrap: Any) -> None:
    client = Client(wrap(app, metrics_path="/metrics", max_pending=1))
    before = scrape(client)
    held = client.post("/work/hold").headers["Location"]
    assert client.post("/work/ok").status_code == 503
    client.delete(held)
    full = 'asyncwsgi_tasks_rejected_total{pattern="/work/*",reason="full"}'
    assert delta(before, scrape(client))[full] == 1


def test_gauges_are_read_from_the_store(wrap: Any, tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    client = Client(wrap(app, metrics_path="/metrics", store=store, max_workers=2))
    held = [client.post("/work/hold").headers["Location"] for _ in range(5)]
    deadline = time.monotonic() + 10
    while store.count_states() != {"queued": 3, "running": 2}:
        assert time.monotonic() < deadline, store.count_states()
        time.sleep(0.01)
    samples = scrape(client)
    assert (samples["asyncwsgi_tasks_queued"], samples["asyncwsgi_tasks_running"]) == (3, 2)
    for location in held:
        client.delete(location)


def test_a_lost_task_is_counted_once(wrap: Any, tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    client = Client(wrap(app, metrics_path="/metrics", store=store))
    before = scrape(client)
    # As another process left it: running, its lease long past.
    now = time.time()
    record = TaskRecord("L" * 32, state="running", created=now - 60, lease_until=now - 30)
    assert store.create(record).created
    for _ in range(3):
        assert client.get("/status/" + record.id).status_code == 500
    counted = delta(before, scrape(client))
    assert counted["asyncwsgi_tasks_lost_total"] == 1
    assert counted['asyncwsgi_tasks_finished_total{status_class="5xx"}'] == 0


def test_waiting_requests(wrap: Any) -> None:
    client = Client(wrap(app, metrics_path="/metrics"))
    waiter = threading.Thread(
        target=client.post, args=("/work/sleep",), kwargs={"headers": {"Prefer": "wait=5"}}
    )
    before = scrape(client)
    waiter.start()
    deadline = time.monotonic() + 5
    while delta(before, scrape(client))["asyncwsgi_waiting_requests"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    waiter.join()
    assert delta(before, scrape(client))["asyncwsgi_waiting_requests"] == 0


def test_registry_for_an_exporter_of_ones_own(wrap: Any) -> None:
    from prometheus_client import generate_latest

    middleware = wrap(app)
    samples = parse(generate_latest(middleware.metrics_registry).decode())
    assert {ACCEPTED, "asyncwsgi_tasks_queued"} <= set(samples)


_EXPORTER_OF_ONES_OWN = r"""
import threading
from prometheus_client import REGISTRY
from werkzeug.test import Client
from asyncwsgi import AsyncMiddleware, metrics
from tests.helpers import wait_done, wait_for

held = threading.Event()

def app(environ, start_response):
    if environ["PATH_INFO"] == "/work/held":
        held.wait(10)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

def one_task(client):
    assert wait_done(client, client.post("/work/a").headers["Location"]).status_code == 200

sample = 'asyncwsgi_tasks_accepted_total'
middleware = AsyncMiddleware(app, paths=["/work/*"])
client = Client(middleware)
one_task(client)
print(metrics.INSTRUMENTS is None, REGISTRY.get_sample_value(sample, {"pattern": "/work/*"}))
# A request that waits (Prefer: wait) from before counting is on to after it.
waiter = threading.Thread(
    target=lambda: Client(middleware).post("/work/held", headers={"Prefer": "wait=10"})
)
waiter.start()
assert wait_for(lambda: middleware._waits._waiting == 1, 10, every=0.01)
metrics.enable()
one_task(client)
one_task(client)
print(metrics.INSTRUMENTS is None, REGISTRY.get_sample_value(sample, {"pattern": "/work/*"}))
held.set()
waiter.join(10)
print(REGISTRY.get_sample_value("asyncwsgi_waiting_requests"))
middleware.close()
"""


def test_a_process_counts_once_asked_to_and_not_before() -> None:
    """prometheus_client installed, no ``metrics_path``: nothing is counted (nor
    registered) until ``asyncwsgi.metrics.enable()``, then every task is (an
    exporter of one's own on the default registry, a worker outside
    multiprocess mode). A request that was waiting when counting began
    leaves the waiting gauge at 0, not below."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", _EXPORTER_OF_ONES_OWN],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["True None", "False 2.0", "0.0"]


# -- gunicorn -w 3 on SQLite ---------------------------------------------------

Answer = tuple[int, dict[str, str], bytes]


def call(port: int, method: str, path: str, body: bytes | None = None) -> Answer:
    """One request on its own connection, so it lands on any worker."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@contextmanager
def gunicorn(tmp_path: Path, store_url: str, workers: int) -> Iterator[int]:
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = dict(os.environ)
    env["ASYNCWSGI_TEST_STORE"] = store_url
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [
        sys.executable, "-m", "gunicorn", "-w", str(workers),
        "-b", f"127.0.0.1:{port}", "--log-level", "warning", "-c", "python:tests.gunicorn_conf",
        "tests.apps.metrics_app:application",
    ]  # fmt: skip
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, log_path.read_text(errors="replace")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    assert time.monotonic() < deadline, "gunicorn did not start"
                    time.sleep(0.05)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def poll(port: int, location: str) -> int:
    deadline = time.monotonic() + 30
    while True:
        status, _, _ = call(port, "GET", location)
        if status != 202:
            return status
        assert time.monotonic() < deadline, f"{location} still 202"
        time.sleep(0.02)


def one_task(port: int, i: int) -> str:
    """Task ``i`` of 300: a tenth too large, a tenth failing, a tenth
    cancelled, the rest fine. Returns what became of it."""
    kind = i % 10
    if kind == 0:
        status, _, _ = call(port, "POST", "/work/big", b"z" * 2000)
        assert status == 413
        return "rejected"
    path = {1: "/work/fail", 2: "/work/hold"}.get(kind, f"/work/ok-{i}")
    status, headers, _ = call(port, "POST", path, b"payload")
    assert status == 202, status
    location = headers["Location"]
    if kind == 2:
        assert call(port, "DELETE", location)[0] == 204
        return "cancelled"
    status = poll(port, location)
    assert status == (500 if kind == 1 else 200)
    return str(status)


def scrapes(port: int, times: int) -> tuple[list[dict[str, float]], set[str]]:
    """``times`` scrapes, until at least two workers answered some: each round
    keeps a worker busy with a plain request while three scrapes go at once,
    so that an idle worker cannot take them all."""
    answers: list[Answer] = []
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(4) as pool:
        while len(answers) < times or len({h["X-Worker-Pid"] for _, h, _ in answers}) < 2:
            assert time.monotonic() < deadline, "one worker answered every scrape"
            busy = pool.submit(call, port, "GET", "/busy?0.3")
            time.sleep(0.05)
            answers += pool.map(lambda _: call(port, "GET", "/metrics"), range(3))
            busy.result()
    assert all(status == 200 for status, _, _ in answers)
    pids = {headers["X-Worker-Pid"] for _, headers, _ in answers}
    return [parse(body.decode()) for _, _, body in answers], pids


TOTALS = (
    ACCEPTED,
    'asyncwsgi_tasks_finished_total{status_class="2xx"}',
    'asyncwsgi_tasks_finished_total{status_class="5xx"}',
    "asyncwsgi_tasks_cancelled_total",
    "asyncwsgi_tasks_lost_total",
    'asyncwsgi_tasks_rejected_total{pattern="/work/*",reason="too_large"}',
    "asyncwsgi_tasks_queued",
    "asyncwsgi_tasks_running",
)


def adds_up(sample: dict[str, float]) -> bool:
    """accepted = finished + cancelled + lost + in flight (queued, running)."""
    finished = sum(v for k, v in sample.items() if k.startswith("asyncwsgi_tasks_finished_total"))
    return sample[ACCEPTED] == (
        finished
        + sample["asyncwsgi_tasks_cancelled_total"]
        + sample["asyncwsgi_tasks_lost_total"]
        + sample["asyncwsgi_tasks_queued"]
        + sample["asyncwsgi_tasks_running"]
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_totals_add_up_whichever_gunicorn_worker_answers(tmp_path: Path) -> None:
    store_url = "sqlite:///" + str(tmp_path / "tasks.db")
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    try:
        with gunicorn(tmp_path, store_url, workers=3) as port:
            # While tasks run: the gauges are the store's counts, from any worker.
            held = [call(port, "POST", "/work/hold")[1]["Location"] for _ in range(6)]
            deadline = time.monotonic() + 15
            while store.count_states() != {"queued": 0, "running": 6}:
                assert time.monotonic() < deadline, store.count_states()
                time.sleep(0.05)
            samples, pids = scrapes(port, 30)
            for sample in samples:
                assert (sample["asyncwsgi_tasks_queued"], sample["asyncwsgi_tasks_running"]) == (
                    0,
                    6,
                )
            assert len(pids) >= 2, pids
            for location in held:
                assert call(port, "DELETE", location)[0] == 204

            with ThreadPoolExecutor(12) as pool:
                outcomes = list(pool.map(lambda i: one_task(port, i), range(300)))
            # Cancelled tasks end (their app returns) on their own schedule;
            # their late results are dropped whenever that is.
            deadline = time.monotonic() + 15
            while store.count_states() != {"queued": 0, "running": 0}:
                assert time.monotonic() < deadline, store.count_states()
                time.sleep(0.05)

            # A task's counter moves just after its result is stored, so a
            # client may see the result a moment before the count: settle.
            deadline = time.monotonic() + 10
            while not adds_up(parse(call(port, "GET", "/metrics")[2].decode())):
                assert time.monotonic() < deadline, "the totals never added up"
                time.sleep(0.05)
            samples, pids = scrapes(port, 30)
    finally:
        store.close()

    assert outcomes.count("rejected") == 30
    assert outcomes.count("cancelled") == 30
    assert outcomes.count("500") == 30
    assert outcomes.count("200") == 210
    totals = [tuple(sample[name] for name in TOTALS) for sample in samples]
    print(f"\nscrapes answered by {len(pids)} workers: {dict(zip(TOTALS, totals[0], strict=True))}")
    assert len(pids) >= 2, pids
    assert len(set(totals)) == 1  # the same whichever worker answered
    assert adds_up(samples[0])
    assert totals[0] == (276, 210, 30, 36, 0, 30, 0, 0)
