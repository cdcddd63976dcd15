"""Completed tasks per second with 1 and with 2 worker processes, on each
engine: Celery, RQ (its default forking worker, asyncwsgi's preloading one,
RQ's SimpleWorker) and Django Tasks (django-tasks-db's database backend), in
one run.

    python -m bench.engines_bench [--tasks 100] [--rounds 5] [--cpu-ms 20]
                                  [--engines celery,rq,rq-preload,rq-simple,django-tasks]

Starts its own redis-server (Celery's broker and RQ's queues on db 0, the
task store on db 1, the same store for every engine) and, per engine, one
worker process on the queue ``one`` and two on the queue ``two``: Celery
workers with ``--concurrency 1``; ``rq worker``, a forked work horse per
job (``rq-preload``: ``asyncwsgi.executors.rq.Worker``, which imports the app
before it forks; ``rq-simple``: RQ's SimpleWorker, no fork); ``db_worker``
on an SQLite database. Each round submits the same N tasks (each burns
``--cpu-ms`` of CPU in the app) through an AsyncMiddleware
with that engine's executor, to one queue then the other, and times from
the first submission until the store has no task queued or running. Rounds
alternate which engine and which queue go first. Prints medians and ratios;
writes ``bench/results/engines.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware, Executor
from asyncwsgi.stores import Store, open_store

from .engine_app import work
from .services import RedisServer, stop_group
from .services import celery_app as celery_app_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "engines.json"
ENGINES = ("celery", "rq", "rq-preload", "rq-simple", "django-tasks")
APP = "bench.engine_app:work"
QUEUES = ("one", "two")


# The Celery app the workers load (-A bench.engines_bench:celery_app), with
# the asyncwsgi task registered at import.
celery_app = None
if os.environ.get("BENCH_CELERY_BROKER"):
    from asyncwsgi.executors.celery import CeleryExecutor as _CeleryExecutor

    celery_app = celery_app_for("engines_bench", os.environ["BENCH_CELERY_BROKER"])
    _CeleryExecutor(celery_app, APP)


class _Engine:
    """One engine's workers (1 on queue one, 2 on queue two) and executors."""

    def __init__(self, name: str, broker: str, workdir: str) -> None:
        self.name = name
        self.broker = broker
        # PYTHONWARNINGS: no "running as root" SecurityWarning in the output.
        self.env = {
            **os.environ,
            "BENCH_CELERY_BROKER": broker,
            "BENCH_DJANGO_DB": f"{workdir}/django.db",
            "DJANGO_SETTINGS_MODULE": "bench.django_settings",
            "PYTHONPATH": str(ROOT),
            "PYTHONWARNINGS": "ignore",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self._celery: Any = None

    def command(self, index: int, queue: str) -> list[str]:
        py = sys.executable
        if self.name == "celery":
            return [py, "-m", "celery", "-A", "bench.engines_bench:celery_app", "worker",
                    "--concurrency", "1", "-Q", queue, "-n", f"{queue}{index}@%h",
                    "--loglevel", "warning", "--without-gossip", "--without-mingle",
                    "--without-heartbeat"]  # fmt: skip
        if self.name.startswith("rq"):
            # rq-preload: asyncwsgi's forking worker, which imports the app
            # before it forks; rq-simple: RQ's SimpleWorker runs jobs in the
            # worker process, keeping the app and the store between jobs.
            classes = {
                "rq-preload": "asyncwsgi.executors.rq.Worker",
                "rq-simple": "rq.SimpleWorker",
            }
            simple = ["-w", classes[self.name]] if self.name in classes else []
            return [py, "-m", "rq.cli", "worker", "-u", self.broker, f"{self.name}-{queue}",
                    "--logging_level", "WARNING", *simple]  # fmt: skip
        return [py, "-m", "django", "db_worker", "--queue-name", queue, "--interval", "0.01",
                "--no-startup-delay", "-v", "0"]  # fmt: skip

    def start(self) -> None:
        if self.name == "django-tasks":
            subprocess.run([sys.executable, "-m", "django", "migrate", "-v", "0"],
                           cwd=ROOT, env=self.env, check=True)  # fmt: skip
            os.environ.update(BENCH_DJANGO_DB=self.env["BENCH_DJANGO_DB"])
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.django_settings")
            import django

            django.setup()
        for index, queue in enumerate(("one", "two", "two")):
            self.procs.append(
                subprocess.Popen(self.command(index, queue), cwd=ROOT, env=self.env,
                                 stdout=subprocess.DEVNULL, start_new_session=True)
            )  # fmt: skip

    def executor(self, queue: str) -> Executor:
        if self.name == "celery":
            from asyncwsgi.executors.celery import CeleryExecutor

            if self._celery is None:
                self._celery = celery_app_for("engines_bench", self.broker)
            return CeleryExecutor(self._celery, APP, queue=queue)
        if self.name.startswith("rq"):
            from redis import Redis
            from rq import Queue

            from asyncwsgi.executors.rq import RQExecutor

            # One queue name per engine: the two RQ variants share the Redis.
            name = f"{self.name}-{queue}"
            return RQExecutor(Queue(name, connection=Redis.from_url(self.broker)), APP)
        from asyncwsgi.executors.django_tasks import DjangoTasksExecutor

        return DjangoTasksExecutor(APP, queue_name=queue)

    def stop(self) -> None:
        for proc in self.procs:
            stop_group(proc)


def _run_round(middleware: AsyncMiddleware, store: Store, tasks: int, cpu_ms: float) -> float:
    client = Client(middleware)
    started = time.perf_counter()
    for _ in range(tasks):
        response = client.post(f"/work?{cpu_ms}")
        assert response.status_code == 202, response.status_code
    deadline = time.monotonic() + 300
    while store.count_active():
        if time.monotonic() > deadline:
            raise RuntimeError("tasks still queued or running after 300 s")
        time.sleep(0.005)
    return tasks / (time.perf_counter() - started)


def measure(
    tasks: int = 100, rounds: int = 5, cpu_ms: float = 20.0, engines: tuple[str, ...] = ENGINES
) -> dict[str, Any]:
    """Start redis-server and every engine's workers, run ``rounds``
    alternating rounds of ``tasks`` tasks on one and on two workers of each
    engine, stop everything; the figures, per engine."""
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise ValueError(f"unknown engines {sorted(unknown)}; known: {', '.join(ENGINES)}")
    running: list[_Engine] = []
    middlewares: dict[str, dict[str, AsyncMiddleware]] = {}
    store: Store | None = None
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as workdir:
        try:
            store = open_store(redis_server.url(1))
            for name in engines:
                engine = _Engine(name, redis_server.url(0), workdir)
                running.append(engine)
                engine.start()
                middlewares[name] = {
                    queue: AsyncMiddleware(
                        work,
                        paths=["/work"],
                        store=store,
                        executor=engine.executor(queue),
                        max_pending=100_000,
                    )  # fmt: skip
                    for queue in QUEUES
                }
            for by_queue in middlewares.values():  # warm up: workers up, imports, connections
                for middleware in by_queue.values():
                    _run_round(middleware, store, 10, cpu_ms)

            load_before = os.getloadavg()[0]
            rates: dict[str, dict[str, list[float]]] = {
                name: {queue: [] for queue in QUEUES} for name in engines
            }
            for index in range(rounds):
                shift = index % len(engines)
                for name in engines[shift:] + engines[:shift]:
                    order = QUEUES if index % 2 == 0 else QUEUES[::-1]
                    for queue in order:
                        rate = _run_round(middlewares[name][queue], store, tasks, cpu_ms)
                        rates[name][queue].append(rate)
            load_after = os.getloadavg()[0]
        finally:
            # The middlewares' background duties (the lease sweeper) stop
            # before the Redis server does, so that they neither retry a
            # stopped server nor take CPU from the scenarios that follow.
            for by_queue in middlewares.values():
                for middleware in by_queue.values():
                    middleware.close(10)
            if store is not None:
                store.close()
            for engine in running:
                engine.stop()

    result: dict[str, Any] = {
        "tasks": tasks,
        "rounds": rounds,
        "cpu_ms": cpu_ms,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": {"before": load_before, "after": load_after},
        "engines": {},
    }
    for name in engines:
        one, two = statistics.median(rates[name]["one"]), statistics.median(rates[name]["two"])
        result["engines"][name] = {
            "tasks_per_second": rates[name],
            "median": {"one": one, "two": two},
            "ratio": two / one,
        }
    return result


def table(result: dict[str, Any]) -> list[str]:
    """The figures as Markdown table lines."""
    ideal = 1000 / result["cpu_ms"]
    lines = [
        "| engine | workers | tasks/s (median) | rounds | ideal | 2/1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in result["engines"].items():
        for queue, workers in (("one", 1), ("two", 2)):
            rates = ", ".join(f"{r:.1f}" for r in figures["tasks_per_second"][queue])
            ratio = f"{figures['ratio']:.2f}" if workers == 2 else ""
            lines.append(
                f"| {name} | {workers} | {figures['median'][queue]:.1f} | {rates} | "
                f"{workers * ideal:.0f} | {ratio} |"
            )
    return lines


def main(argv: list[str] | None = None, results: Path = RESULTS) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu-ms", type=float, default=20.0)
    parser.add_argument("--engines", default=",".join(ENGINES))
    args = parser.parse_args(argv)

    engines = tuple(name for name in args.engines.split(",") if name)
    result = measure(args.tasks, args.rounds, args.cpu_ms, engines)
    load = result["load_average"]
    print(
        f"{args.tasks} tasks of {args.cpu_ms:g} ms CPU, {args.rounds} rounds, alternating; "
        f"{os.cpu_count()} CPUs, load average {load['before']:.1f} before, "
        f"{load['after']:.1f} after"
    )
    print("\n".join(table(result)))
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
