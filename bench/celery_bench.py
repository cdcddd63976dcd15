"""Completed tasks per second with 1 and with 2 Celery worker processes.

    python -m bench.celery_bench [--tasks 100] [--rounds 5] [--cpu-ms 20]

The Celery rows of ``python -m bench.engines_bench``, alone: its own
redis-server, three Celery workers with ``--concurrency 1`` (one on the
queue ``one``, two on ``two``), N tasks of ``--cpu-ms`` of CPU per round,
timed from the first submission until the store has no task queued or
running, rounds alternating. Prints medians and the ratio; writes
``bench/results/celery.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from . import engines_bench

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "celery.json"


def measure(tasks: int = 100, rounds: int = 5, cpu_ms: float = 20.0) -> dict[str, Any]:
    """The figures of :func:`bench.engines_bench.measure` for Celery alone."""
    result = engines_bench.measure(tasks, rounds, cpu_ms, ("celery",))
    celery = result.pop("engines")["celery"]
    return {**result, **celery}


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
