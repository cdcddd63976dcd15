"""``python -m bench [--quick] [--out DIR] [--only N ...]``: every scenario, side by side."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import celery_recipe, pinning, replicas, report, scenarios, task_list
from .server import ServerOptions, Servers

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="every scenario in a second or two")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    parser.add_argument(
        "--only", type=int, nargs="*", choices=range(1, 12), help="run these scenarios only"
    )
    parser.add_argument(
        "--rounds", type=int, help="alternating rounds per HTTP comparison (default 5; 2 quick)"
    )
    args = parser.parse_args(argv)
    cfg = scenarios.Config.make(args.quick)
    if args.rounds:
        cfg.rounds = args.rounds
    only = set(args.only or range(1, 12))
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    results: dict[str, report.Figures] = {}

    def done(name: str, result: report.Figures) -> None:
        results[name] = result
        print(report.table(result["rows"]).split("\n", 2)[2], flush=True)

    print(report.table([]), flush=True)
    if only & {1, 2, 3}:
        client_cpus, server_cpus = pinning.split() or (None, None)
        names: tuple[str, ...] = ("bare", "async", "naive", "bare:control")
        if only & {2, 3}:
            names += ("async:inline", "least")
        options: dict[str, ServerOptions] = {name: {"cpus": server_cpus} for name in names}
        if "async:inline" in options:
            options["async:inline"]["extra_env"] = {"BENCH_EXECUTOR": "inline"}
        with Servers(*names, options=options) as servers, pinning.client_on(client_cpus):
            if 1 in only:
                done("pass_through", scenarios.pass_through(servers, cfg))
            if 2 in only:
                done("full_cycle", scenarios.full_cycle_scenario(servers, cfg))
            if 3 in only:
                done("prefer_wait", scenarios.prefer_wait(servers, cfg))
    if 4 in only:
        done("many_tasks", scenarios.many_tasks(cfg))
    if 5 in only:
        done("burst", scenarios.burst(cfg))
    if 6 in only:
        done("shared_stores", scenarios.shared_stores(cfg))
    if 7 in only:
        done("celery", scenarios.celery(cfg))
    if 8 in only:
        client_cpus, server_cpus = pinning.split() or (None, None)
        names = ("async", "async:metrics", "async:traced", "async:spans")
        options = {name: {"cpus": server_cpus} for name in names}
        options["async:metrics"]["observe"] = "metrics"
        options["async:traced"]["observe"] = "traced"
        options["async:spans"]["observe"] = "spans"
        with Servers(*names, options=options) as servers, pinning.client_on(client_cpus):
            done("observability", scenarios.observability(servers, cfg))
    if 9 in only:
        done("task_list", task_list.task_list(cfg))
    if 10 in only:
        done("min_replicas", replicas.replicas(cfg))
    if 11 in only:
        done("celery_recipe", celery_recipe.celery_recipe(cfg))

    rows = [r for result in results.values() for r in result["rows"]]
    elapsed = time.perf_counter() - started
    machine = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "pinning": _describe(pinning.split()) if only & {1, 2, 3} else None,
    }
    mode = "quick" if args.quick else "full"
    document = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "config": vars(cfg),
        "machine": machine,
        "elapsed_s": elapsed,
        "rows": rows,
        "scenarios": results,
    }
    report.write_json(args.out / "latest.json", document)
    title = (
        f"asyncwsgi benchmark ({mode}; {machine['nproc']} CPUs, Python {machine['python']}; "
        "gunicorn gthread 8 threads, -w 1 unless said; medians of alternating rounds)"
    )
    report.plot(args.out / "latest.png", rows, title)
    missed = [r for r in rows if r["met"] is False]
    print(f"\n{mode} run in {elapsed:.1f} s; {len(missed)} target(s) missed; "
          f"results in {args.out / 'latest.json'} and latest.png")  # fmt: skip
    return 0


def _describe(split: tuple[set[int], set[int]] | None) -> str:
    if split is None:
        return "none (fewer than 2 CPUs)"
    client, server = split
    return f"one-worker servers on CPU {sorted(server)}, load client on CPUs {sorted(client)}"


if __name__ == "__main__":
    sys.exit(main())
