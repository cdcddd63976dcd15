"""gunicorn settings for the benchmark's servers: pin the server to the CPUs
named in ``BENCH_CPUS`` (see ``pinning``) before it forks its workers, and
open no control socket (gunicorn 25.1 and later open one in the home
directory by default, and several servers at once would fight over it;
older versions ignore the setting)."""

from __future__ import annotations

import os

from bench.pinning import ENV

control_socket_disable = True


def on_starting(server: object) -> None:
    cpus = os.environ.get(ENV)
    if cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})
