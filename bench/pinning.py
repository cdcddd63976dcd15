"""Keep the load client and a one-worker server off each other's CPU.

A gunicorn worker is one CPython process: its threads share one GIL, so it
uses one CPU at a time. Left to the scheduler, its threads hop between the
CPUs the load client also uses, and every GIL hand-off between cores costs a
cross-core wake-up: on a 2-CPU machine that halves every variant's
throughput and makes runs noisy. So for the one-worker scenarios the servers
get the last CPU and the client the others (on machines with at least 2).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

ENV = "BENCH_CPUS"


def split() -> tuple[set[int], set[int]] | None:
    """(client CPUs, server CPUs), or None where pinning is not possible."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return set(cpus[:-1]), {cpus[-1]}


@contextlib.contextmanager
def client_on(cpus: set[int] | None) -> Iterator[None]:
    """Run the block (the load client's threads included) on ``cpus``."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def server_env(cpus: set[int] | None) -> dict[str, str]:
    """What to add to a server's environment to pin it (see ``gunicorn_conf``)."""
    return {ENV: ",".join(map(str, sorted(cpus)))} if cpus else {}
