"""Scenario 10: what ``min_replicas=1`` costs on Redis.

The full cycle (submit, poll until done, on a fresh connection each, as in
scenario 6) through gunicorn ``-w 4`` on a Redis primary with one replica on
the same machine: the same primary, one server with ``min_replicas=1`` (each
creation and result waits for the replica's ``WAIT``) and one without,
alternating rounds; and the store's own writes an accepted task makes
(create, start, finish) timed in one process, where HTTP's noise does not
hide them. On one machine the replica's round trip is a loopback one;
across machines add the network's.
"""

from __future__ import annotations

import functools
import shutil
import statistics
import time
from typing import TYPE_CHECKING

from asyncwsgi.stores import open_store
from asyncwsgi.task import Result, TaskRecord

from .client import Tally, alternate, checked_cycle, run_load
from .server import ServerOptions, Servers
from .services import RedisReplicated

if TYPE_CHECKING:
    from .report import Figures
    from .scenarios import Config

NAMES = {"async:redis": "without", "async:redis-wait": "min_replicas=1"}


def _store_cycle(url: str, tasks: int) -> float:
    """Microseconds per task of create, start and finish on the store at ``url``."""
    store = open_store(url)
    result = Result("200 OK", [("Content-Type", "text/plain")], b"ok")
    try:
        started = time.perf_counter()
        for i in range(tasks):
            now = time.time()
            record = TaskRecord(f"bench-{i}-{now!r}", created=now, ttl=60, lease_until=now + 30)
            store.create(record)
            store.start(record.id, now + 30)
            store.finish(record.id, result)
        return (time.perf_counter() - started) / tasks * 1e6
    finally:
        store.close()


def replicas(cfg: Config) -> Figures:
    from . import apps
    from .scenarios import RedisCommands, _checked_load, _completed, row

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("scenario 10 skipped: redis-server is not installed", flush=True)
        return {"skipped": "redis-server is not installed", "rows": []}
    tallies = {label: Tally() for label in NAMES.values()}
    with RedisReplicated(1) as group:
        port = group.primary.port
        urls = {
            "without": f"redis://127.0.0.1:{port}/0",
            "min_replicas=1": f"redis://127.0.0.1:{port}/1?min_replicas=1",
        }
        options: dict[str, ServerOptions] = {
            name: {"workers": 4, "store": urls[label]} for name, label in NAMES.items()
        }
        store_us: dict[str, list[float]] = {label: [] for label in NAMES.values()}
        tasks = 200 if cfg.quick else 2000
        for r in range(cfg.rounds):
            for label in list(urls)[:: 1 if r % 2 == 0 else -1]:
                store_us[label].append(_store_cycle(urls[label], tasks))
        with Servers(*options, options=options) as servers:
            ports = {label: servers[name].port for name, label in NAMES.items()}
            for server_port in ports.values():  # warm up every worker; not counted
                run_load(server_port, checked_cycle(apps.TASK_PATH, Tally()), cfg.clients, 0.5)
            # Commands on the primary during each round, per task (both
            # variants' databases are on it; the idle one sweeps now and then).
            commands = {label: RedisCommands(port) for label in ports}
            try:
                res = alternate(
                    {
                        label: functools.partial(
                            commands[label].around,
                            functools.partial(_checked_load, server_port, tallies[label], cfg),
                            _completed,
                        )
                        for label, server_port in ports.items()
                    },
                    cfg.rounds,
                )
            finally:
                for counter in commands.values():
                    counter.close()
    per_task = {label: statistics.median(c.per_unit) for label, c in commands.items()}
    with_wait, without = res["min_replicas=1"], res["without"]
    rows = [
        row("10 min_replicas", "tasks/s, Redis -w 4, one replica, min_replicas=1",
            with_wait["per_s"], "without", without["per_s"]),
        row("10 min_replicas", "p50 ms/task, min_replicas=1", with_wait["p50_ms"],
            "without", without["p50_ms"], higher=False),
    ]  # fmt: skip
    rows.append(row("10 min_replicas", "Redis commands/task on the primary, min_replicas=1",
                    per_task["min_replicas=1"], "without", per_task["without"],
                    higher=False))  # fmt: skip
    us = {label: statistics.median(values) for label, values in store_us.items()}
    rows.append(row("10 min_replicas", "store µs per task (create, start, finish), "
                    "min_replicas=1", us["min_replicas=1"], "without", us["without"],
                    higher=False))  # fmt: skip
    lost = sum(t.lost for t in tallies.values())
    lost_row = row("10 min_replicas", "tasks lost (404, wrong body, other), both", lost, "none", 0)
    lost_row.update({"ratio": None, "target": 0, "target_kind": "==", "met": lost == 0})
    rows.append(lost_row)
    return {
        "http": res,
        "store_us_per_task": us,
        "redis_commands_per_task": per_task,
        "client": "fresh connection per request (Connection: close), poll every 2 ms",
        "outcomes": {label: dict(t.counts) for label, t in tallies.items()},
        "rows": rows,
    }
