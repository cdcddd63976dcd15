"""Completed tasks per second with 1 and with 2 Celery worker processes.

    python -m bench.celery_bench [--tasks 100] [--rounds 3] [--cpu-ms 20]

Starts its own redis-server (broker on db 0, task store on db 1) and three
Celery workers with ``--concurrency 1``: one consumes the queue ``one``, two
consume the queue ``two``. Each round submits the same N tasks (each burns
``--cpu-ms`` of CPU in the app) through an AsyncMiddleware with a
CeleryExecutor, first to one queue then to the other (alternating which goes
first), and times from the first submission until the store has no task
queued or running. Prints medians and the ratio; writes
``bench/results/celery.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from celery import Celery
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware
from asyncwsgi.contrib.celery import CeleryExecutor
from asyncwsgi.stores import open_store

from .services import RedisServer, stop_group

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "celery.json"

celery_app = Celery("celery_bench", broker=os.environ.get("BENCH_CELERY_BROKER"))
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


def work(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Burn ``cpu_ms`` (query string) of CPU, then answer."""
    cpu_ms = float(environ.get("QUERY_STRING", "") or 20)
    end = time.thread_time() + cpu_ms / 1000
    n = 0
    while time.thread_time() < end:
        n += 1
    body = f"{os.getpid()} {n}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# Registered at import, so that the workers (-A bench.celery_bench) know the task.
_EXECUTORS = {
    queue: CeleryExecutor(celery_app, "bench.celery_bench:work", queue=queue)
    for queue in ("one", "two")
}


def _run_round(middleware: AsyncMiddleware, store: Any, tasks: int, cpu_ms: float) -> float:
    client = Client(middleware)
    started = time.perf_counter()
    for _ in range(tasks):
        response = client.post(f"/work?{cpu_ms}")
        assert response.status_code == 202, response.status_code
    while store.count_active():
        time.sleep(0.005)
    return tasks / (time.perf_counter() - started)


def measure(tasks: int = 100, rounds: int = 5, cpu_ms: float = 20.0) -> dict[str, Any]:
    """Start redis-server and the workers, run ``rounds`` alternating rounds of
    ``tasks`` tasks on one and on two workers, stop everything; the figures."""
    procs: list[subprocess.Popen[bytes]] = []
    with RedisServer() as redis_server:
        try:
            broker = redis_server.url(0)
            store_url = redis_server.url(1)
            celery_app.conf.broker_url = broker
            # PYTHONWARNINGS: no "running as root" SecurityWarning in the output.
            env = {**os.environ, "BENCH_CELERY_BROKER": broker, "PYTHONPATH": str(ROOT)}
            env["PYTHONWARNINGS"] = "ignore"
            for name, queue in (("one", "one"), ("twoa", "two"), ("twob", "two")):
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "bench.celery_bench:celery_app",
                            "worker",
                            "--concurrency",
                            "1",
                            "-Q",
                            queue,
                            "-n",
                            f"{name}@%h",
                            "--loglevel",
                            "warning",
                            "--without-gossip",
                            "--without-mingle",
                            "--without-heartbeat",
                        ],
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            store = open_store(store_url)
            middlewares = {
                queue: AsyncMiddleware(
                    work, paths=["/work"], store=store, executor=executor, max_pending=100_000
                )
                for queue, executor in _EXECUTORS.items()
            }
            deadline = time.monotonic() + 60
            while len(celery_app.control.ping(timeout=0.5) or []) < 3:
                if time.monotonic() > deadline:
                    raise RuntimeError("the Celery workers did not start")
            for middleware in middlewares.values():  # warm up: imports, connections
                _run_round(middleware, store, 10, cpu_ms)

            load_before = os.getloadavg()[0]
            rates: dict[str, list[float]] = {"one": [], "two": []}
            for index in range(rounds):
                order = ("one", "two") if index % 2 == 0 else ("two", "one")
                for queue in order:
                    rates[queue].append(_run_round(middlewares[queue], store, tasks, cpu_ms))
            load_after = os.getloadavg()[0]
        finally:
            for proc in procs:
                stop_group(proc)

    one, two = statistics.median(rates["one"]), statistics.median(rates["two"])
    return {
        "tasks": tasks,
        "rounds": rounds,
        "cpu_ms": cpu_ms,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tasks_per_second": rates,
        "median": {"one": one, "two": two},
        "ratio": two / one,
        "load_average": {"before": load_before, "after": load_after},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu-ms", type=float, default=20.0)
    args = parser.parse_args()

    result = measure(args.tasks, args.rounds, args.cpu_ms)
    rates = result["tasks_per_second"]
    one, two = result["median"]["one"], result["median"]["two"]
    load = result["load_average"]
    ideal = 1000 / args.cpu_ms
    print(
        f"{args.tasks} tasks of {args.cpu_ms:g} ms CPU, {args.rounds} rounds, alternating; "
        f"{os.cpu_count()} CPUs, load average {load['before']:.1f} before, "
        f"{load['after']:.1f} after"
    )
    print("| Celery workers | tasks/s (median) | rounds | ideal |")
    print("|---|---|---|---|")
    print(
        f"| 1 x --concurrency 1 | {one:.1f} | "
        f"{', '.join(f'{r:.1f}' for r in rates['one'])} | {ideal:.0f} |"
    )
    print(
        f"| 2 x --concurrency 1 | {two:.1f} | "
        f"{', '.join(f'{r:.1f}' for r in rates['two'])} | {2 * ideal:.0f} |"
    )
    print(f"ratio 2/1: {two / one:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
