"""Redis commands per task cycle, by the features a task uses.

    python -m bench.redis_commands [--tasks 50] [--engine threads|celery|both]

One redis-server holds the task store and, for Celery, another the broker,
so that each one's share is seen. Each cycle submits one task
(``POST /work?0``), polls its status URL every 2 ms until it is done and
reads the result, one task at a time. The
count is ``total_commands_processed`` from ``INFO stats`` (the commands run
inside scripts included; the INFO calls themselves taken off), divided by
the tasks, for every optional feature off and then for each one on:

- ``off``: no task list, no tombstones (``tombstone_ttl=0``), no byte
  budget, no Idempotency-Key, no callback, no waiting request, no watcher;
- ``defaults``: as ``off`` but with the store's default tombstones;
- ``list_tasks``, ``max_stored_bytes``, ``idempotency_key``, ``prefer_wait``:
  ``off`` plus that one.

With ``--engine celery`` a Celery worker (prefork, ``--concurrency 2``) runs
the tasks, and the count includes Celery's own broker traffic.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from werkzeug.test import Client

from asyncwsgi import AsyncMiddleware

from .engine_app import work
from .services import RedisServer, commands_processed, stop_group
from .services import celery_app as celery_app_for

ROOT = Path(__file__).resolve().parent.parent
APP = "bench.engine_app:work"

#: The middleware's options and the request's headers of each scenario.
SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "off": ({"tombstone_ttl": 0}, {}),
    "defaults": ({}, {}),
    "list_tasks": ({"tombstone_ttl": 0, "list_tasks": True}, {}),
    "max_stored_bytes": ({"tombstone_ttl": 0, "max_stored_bytes": 2**30}, {}),
    "idempotency_key": ({"tombstone_ttl": 0}, {"Idempotency-Key": ""}),
    "prefer_wait": ({"tombstone_ttl": 0}, {"Prefer": "wait=5"}),
}


# The Celery app the worker loads (-A bench.redis_commands:celery_app).
celery_app = None
if os.environ.get("BENCH_CELERY_BROKER"):
    from asyncwsgi.executors.celery import CeleryExecutor as _CeleryExecutor

    celery_app = celery_app_for("redis_commands", os.environ["BENCH_CELERY_BROKER"])
    _CeleryExecutor(celery_app, APP)


def cycle(client: Client, headers: dict[str, str], poll: float = 0.002) -> None:
    """Submit one task, poll until it is done, read its result."""
    sent = dict(headers)
    if "Idempotency-Key" in sent:
        sent["Idempotency-Key"] = secrets.token_hex(8)
    response = client.post("/work?0", headers=sent)
    if response.status_code == 200:
        return  # Prefer: wait answered with the result
    assert response.status_code == 202, (response.status_code, response.data)
    location = response.headers["Location"]
    while True:
        response = client.get(location)
        if response.status_code != 202:
            break
        time.sleep(poll)
    assert response.status_code == 200, (response.status_code, response.data)


def count(servers: list[Any], client: Client, headers: dict[str, str], tasks: int) -> list[float]:
    """Redis commands per cycle over ``tasks`` cycles, on each server."""
    before = [commands_processed(server) for server in servers]
    for _ in range(tasks):
        cycle(client, headers)
    after = [commands_processed(server) for server in servers]
    # The first INFO counts itself.
    return [(a - b - 1) / tasks for a, b in zip(after, before, strict=True)]


def measure(tasks: int = 50, engine: str = "threads") -> dict[str, dict[str, float]]:
    """Commands per cycle of each scenario on ``engine``: the store's, the
    broker's and their total."""
    results: dict[str, dict[str, float]] = {}
    with RedisServer() as store_server, RedisServer() as broker_server:
        broker, store = broker_server.url(0), store_server.url(0)
        # (Through Any: redis-py before 6 leaves Redis.close unannotated.)
        counters: list[Any] = [redis.Redis.from_url(store), redis.Redis.from_url(broker)]
        worker = None
        try:
            if engine == "celery":
                env = {**os.environ, "BENCH_CELERY_BROKER": broker, "PYTHONPATH": str(ROOT),
                       "PYTHONWARNINGS": "ignore"}  # fmt: skip
                worker = subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "bench.redis_commands:celery_app",
                     "worker", "--concurrency", "2", "--loglevel", "warning",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            for name, (options, headers) in SCENARIOS.items():
                executor = None
                if engine == "celery":
                    from asyncwsgi.executors.celery import CeleryExecutor

                    executor = CeleryExecutor(celery_app_for("redis_commands", broker), APP)
                middleware = AsyncMiddleware(
                    work, paths=["/work"], store=store, executor=executor, **options
                )
                try:
                    client = Client(middleware)
                    for _ in range(5):  # warm up: the worker up, scripts loaded
                        cycle(client, headers)
                    on_store, on_broker = count(counters, client, headers, tasks)
                    results[name] = {
                        "store": on_store,
                        "broker": on_broker,
                        "total": on_store + on_broker,
                    }
                finally:
                    middleware.close(10)
        finally:
            if worker is not None:
                stop_group(worker)
            for counter in counters:
                counter.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--engine", choices=("threads", "celery", "both"), default="both")
    args = parser.parse_args()
    engines = ("threads", "celery") if args.engine == "both" else (args.engine,)
    table = {engine: measure(args.tasks, engine) for engine in engines}
    print("| scenario | " + " | ".join(f"{e}: store / broker / total" for e in engines) + " |")
    print("|---|" + "---|" * len(engines))
    for name in SCENARIOS:
        cells = [
            "{store:.1f} / {broker:.1f} / {total:.1f}".format(**table[e][name]) for e in engines
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
