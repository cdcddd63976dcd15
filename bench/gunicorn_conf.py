"""gunicorn settings for the benchmark's servers: pin the server to the CPUs
named in ``BENCH_CPUS`` (see ``pinning``) before it forks its workers."""

from __future__ import annotations

import os

from bench.pinning import ENV


def on_starting(server: object) -> None:
    cpus = os.environ.get(ENV)
    if cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})
