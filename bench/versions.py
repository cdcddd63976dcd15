"""``python -m bench.versions [--before REV] [--quick] [--rounds N] [--only N ...]``

The benchmark's ratios of two versions of asyncwsgi, side by side in one run:
the package as it was at ``REV`` ("before", by default the last commit before
the lean-core work) and this checkout's ("after"). Both versions' servers
run at once and take their turns in the same alternating rounds against the
same baselines (bare, naive, floor, the Celery recipe), so the machine's
noise falls on both alike. Scenarios 1, 2, 3, 6 and 11 of ``python -m bench``,
their HTTP figures only (the in-process rows measure the package this process
imported, which is "after").

The old package is taken out of git (``git archive REV asyncwsgi``) into a
temporary directory put first on the ``PYTHONPATH`` of its servers and Celery
workers; ``bench`` itself comes from this checkout. Each of those processes
reports which ``asyncwsgi`` it imported, and the run stops if it is not the
one it should be. Prints a table; writes ``bench/results/versions.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

from . import celery_recipe, pinning, report, scenarios
from .server import ROOT, ServerOptions, Servers, check_package

DEFAULT_BEFORE = "58e860e"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SCENARIOS = (1, 2, 3, 6, 11)
#: Scenarios 1 to 3: the label of each version and its server's name.
VARIANTS = {"before": "async:before", "after": "async"}


class Row(TypedDict):
    """One line of the table: a figure of both versions (``compare``)."""

    scenario: str
    metric: str
    baseline: str
    better: str
    before_value: float
    after_value: float
    before_ratio: float | None
    after_ratio: float | None
    after_over_before: float | None


def materialize(rev: str, into: Path) -> str:
    """Extract ``rev``'s ``asyncwsgi`` package into ``into``; its short commit id."""
    commit = _git("rev-parse", "--short", f"{rev}^{{commit}}")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "asyncwsgi"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def compare(
    scenario: str,
    metric: str,
    res: dict[str, dict[str, Any]],
    key: str,
    baseline: str | None,
    higher: bool = True,
    labels: tuple[str, str] = ("before", "after"),
    baselines: tuple[str, str] | None = None,
) -> Row:
    """A table row: ``res[label][key]`` of each version, each divided by its
    baseline's (``baseline``, or one per version in ``baselines``) when there
    is one; ``after/before`` of the ratios, or of the values without one."""
    values = [res[label][key] for label in labels]
    bases = baselines or ((baseline, baseline) if baseline else None)
    ratios: list[float | None] = [None, None]
    if bases is not None:
        ratios = [v / res[b][key] if res[b][key] else None
                  for v, b in zip(values, bases, strict=True)]  # fmt: skip
    a, b = (ratios if bases is not None else values)[::-1]
    return {
        "scenario": scenario,
        "metric": metric,
        "baseline": baseline or "-",
        "better": "higher" if higher else "lower",
        "before_value": values[0],
        "after_value": values[1],
        "before_ratio": ratios[0],
        "after_ratio": ratios[1],
        "after_over_before": a / b if a is not None and b else None,
    }


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | metric | baseline | better | before ratio | after ratio | after/before |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        before, after = r["before_ratio"], r["after_ratio"]
        if r["baseline"] == "-":  # no baseline: the figures themselves
            before, after = r["before_value"], r["after_value"]
        change = r["after_over_before"]
        lines.append(
            f"| {r['scenario']} | {r['metric']} | {r['baseline']} | {r['better']} "
            f"| {_num(before)} | {_num(after)} | {_num(change)} |"
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"


def http_scenarios(cfg: scenarios.Config, only: set[int], before: Path) -> dict[str, Any]:
    """Scenarios 1 to 3: both versions' one-worker servers and the baselines'."""
    client_cpus, server_cpus = pinning.split() or (None, None)
    names = ("async:before", "async", "bare", "naive", "bare:control")
    options: dict[str, ServerOptions] = {name: {"cpus": server_cpus} for name in names}
    options["async:before"]["path_first"] = before
    out: dict[str, Any] = {}
    with Servers(*names, options=options) as servers, pinning.client_on(client_cpus):
        check_package(servers["async"].threads(), ROOT / "asyncwsgi", "after")
        if 1 in only:
            res = scenarios.pass_through_http(servers, cfg, VARIANTS)
            # The same two servers in both columns: how far a ratio moves by noise here.
            control = compare("1 pass-through", "req/s, A/A control (noise)", res, "per_s",
                              "bare", labels=("bare (A/A control)",) * 2)  # fmt: skip
            control["after_over_before"] = None
            rows = [compare("1 pass-through", "req/s", res, "per_s", "bare"), control]
            out["pass_through"] = {"http": res, "rows": rows}
        if 2 in only:
            res = scenarios.full_cycle_http(servers, cfg, VARIANTS)
            out["full_cycle"] = {"http": res, "rows": [
                compare("2 full cycle", "tasks/s", res, "per_s", "floor"),
                compare("2 full cycle", "tasks/s", res, "per_s", "naive"),
                compare("2 full cycle", "p50 ms/task", res, "p50_ms", "naive", higher=False),
            ]}  # fmt: skip
        if 3 in only:
            res = scenarios.prefer_wait_http(servers, cfg, VARIANTS)
            out["prefer_wait"] = {"http": res, "rows": [
                compare("3 Prefer: wait=5", "req/s", res, "per_s", "bare"),
                compare("3 Prefer: wait=5", "p50 ms/req", res, "p50_ms", "bare", higher=False),
            ]}  # fmt: skip
    return out


def shared_stores(cfg: scenarios.Config, before: Path) -> dict[str, Any]:
    """Scenario 6: each store under each version; a store's ratio is against
    the memory store of the same version, as in ``python -m bench``."""
    measured = scenarios.shared_stores_http(cfg, {" before": before, " after": None})
    res = measured["http"]
    labels = (" before", " after")
    memory = ("memory -w 1 before", "memory -w 1 after")
    rows = [compare("6 shared stores", "tasks/s, memory -w 1", res, "per_s", None,
                    labels=memory)]  # fmt: skip
    for kind in ("SQLite -w 4", "Redis -w 4"):
        if f"{kind} after" not in res:
            continue
        versions = (f"{kind} before", f"{kind} after")
        rows.append(compare("6 shared stores", f"tasks/s, {kind}", res, "per_s", "memory -w 1",
                            labels=versions, baselines=memory))  # fmt: skip
    commands = measured["redis_commands_per_task"]
    if commands:
        per_task = {v: {"n": commands[f"Redis -w 4{v}"]} for v in labels}
        rows.append(compare("6 shared stores", "Redis commands/task, Redis -w 4", per_task, "n",
                            None, higher=False, labels=labels))  # fmt: skip
    lost = {name: {"n": float(tally.lost)} for name, tally in measured["tallies"].items()}
    for kind in ("memory -w 1", "SQLite -w 4", "Redis -w 4"):
        versions = (f"{kind} before", f"{kind} after")
        if versions[1] in lost:
            rows.append(compare("6 shared stores", f"tasks lost (must be 0), {kind}", lost, "n",
                                None, higher=False, labels=versions))  # fmt: skip
    outcomes = {name: dict(t.counts) for name, t in measured["tallies"].items()}
    return {"http": res, "outcomes": outcomes, "redis_commands_per_task": commands,
            "skipped": measured["skipped"], "rows": rows}  # fmt: skip


def celery_path(cfg: scenarios.Config, before: Path) -> dict[str, Any]:
    """Scenario 11: each version's Celery path (its own redis-server and
    worker) against the recipe."""
    why = celery_recipe.skipped()
    if why is not None:
        print(f"scenario 11 skipped: {why}", flush=True)
        return {"skipped": why, "rows": []}
    measured = celery_recipe.measure(cfg, {"before": before, "after": None})
    res = measured["http"]
    per_cycle = {k: {"n": v} for k, v in measured["redis_commands_per_cycle"].items()}
    scenario = "11 Celery path vs the Celery recipe"
    return {**measured, "rows": [
        compare(scenario, "cycles/s", res, "per_s", "recipe"),
        compare(scenario, "p50 ms/cycle", res, "p50_ms", "recipe", higher=False),
        compare(scenario, "Redis commands/cycle (broker included)", per_cycle, "n", "recipe",
                higher=False),
    ]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.versions", description=__doc__)
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="the git revision to compare")
    parser.add_argument("--quick", action="store_true", help="short rounds: a smoke check")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5; 2 quick)")
    parser.add_argument("--only", type=int, nargs="*", choices=SCENARIOS, help="these scenarios")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where versions.json goes")
    args = parser.parse_args(argv)
    cfg = scenarios.Config.make(args.quick)
    if args.rounds:
        cfg.rounds = args.rounds
    only = set(args.only or SCENARIOS)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}

    def run(name: str, measure: Callable[[], dict[str, Any]]) -> None:
        """``measure()`` gives results by scenario name."""
        try:
            results.update(measure())
        except Exception as exc:  # reported in the table's place and the JSON; exit 1
            failed[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name} could not run: {failed[name]}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        before = Path(tmp)
        commit = materialize(args.before, before)
        after = _git("rev-parse", "--short", "HEAD")
        if _git("status", "--porcelain", "--", "asyncwsgi"):
            after += " with uncommitted changes"
        print(f"before: {commit} (git archive, from {before}); after: {after} (this checkout)",
              flush=True)  # fmt: skip
        if only & {1, 2, 3}:
            run("scenarios 1-3", lambda: http_scenarios(cfg, only, before))
        if 6 in only:
            run("scenario 6", lambda: {"shared_stores": shared_stores(cfg, before)})
        if 11 in only:
            run("scenario 11", lambda: {"celery_recipe": celery_path(cfg, before)})
    rows = [r for result in results.values() for r in result["rows"]]
    elapsed = time.perf_counter() - started
    mode = "quick" if args.quick else "full"
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "versions.json", {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "before": commit,
        "after": after,
        "config": vars(cfg),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        "elapsed_s": elapsed,
        "rows": rows,
        "scenarios": results,
        "failed": failed,
    })  # fmt: skip
    print(f"\n{mode} run in {elapsed:.1f} s; results in {args.out / 'versions.json'}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
