"""Scenario 10: what ``min_replicas=1`` costs on Redis.

The full cycle (submit, poll until done, on a fresh connection each, as in
scenario 6) through gunicorn ``-w 4`` on a Redis primary with one replica on
the same machine: the same primary, one server with ``min_replicas=1`` (each
creation and result waits for the replica's ``WAIT``) and one without,
alternating rounds. On one machine the replica's round trip is a loopback
one; across machines add the network's.
"""

from __future__ import annotations

import shutil
from typing import Any

from .client import Tally, alternate, checked_cycle, run_load
from .server import Servers
from .services import RedisReplicated

NAMES = {"async:redis": "without", "async:redis-wait": "min_replicas=1"}


def replicas(cfg: Any) -> dict[str, Any]:
    from . import apps
    from .scenarios import _checked_load, row

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("scenario 10 skipped: redis-server is not installed", flush=True)
        return {"skipped": "redis-server is not installed", "rows": []}
    tallies = {label: Tally() for label in NAMES.values()}
    with RedisReplicated(1) as group:
        port = group.primary.port
        options = {
            "async:redis": {"workers": 4, "store": f"redis://127.0.0.1:{port}/0"},
            "async:redis-wait": {
                "workers": 4,
                "store": f"redis://127.0.0.1:{port}/1?min_replicas=1",
            },
        }
        with Servers(*options, options=options) as servers:
            ports = {label: servers[name].port for name, label in NAMES.items()}
            for server_port in ports.values():  # warm up every worker; not counted
                run_load(server_port, checked_cycle(apps.TASK_PATH, Tally()), cfg.clients, 0.5)
            res = alternate(
                {
                    label: lambda p=server_port, t=tallies[label]: _checked_load(p, t, cfg)
                    for label, server_port in ports.items()
                },
                cfg.rounds,
            )
    with_wait, without = res["min_replicas=1"], res["without"]
    rows = [
        row("10 min_replicas", "tasks/s, Redis -w 4, one replica, min_replicas=1",
            with_wait["per_s"], "without", without["per_s"]),
        row("10 min_replicas", "p50 ms/task, min_replicas=1", with_wait["p50_ms"],
            "without", without["p50_ms"], higher=False),
    ]  # fmt: skip
    lost = sum(t.lost for t in tallies.values())
    r = row("10 min_replicas", "tasks lost (404, wrong body, other), both", lost, "none", 0)
    r.update(ratio=None, target=0, target_kind="==", met=lost == 0)
    rows.append(r)
    return {
        "http": res,
        "client": "fresh connection per request (Connection: close), poll every 2 ms",
        "outcomes": {label: dict(t.counts) for label, t in tallies.items()},
        "rows": rows,
    }
