"""``python -m bench.large_results [--quick] [--out DIR]``: large results, side by side.

Two rows per store (memory, SQLite, Redis, and Redis with ``local_copies``),
all from one run:

1. Replay throughput of a 100 MiB result against the same gunicorn server
   serving the same bytes as a static file (through ``wsgi.file_wrapper``),
   alternating the two in rounds; medians and their ratio. The first replay
   is timed apart, before the rounds: with local copies it is the one that
   reads Redis and keeps the copy the rounds replay. Beside them, the
   same file read into Python and handed to the server 1 MiB at a time: the
   ceiling of a body that passes through the process (a Redis replay
   without a copy does; files go to ``sendfile``).
2. Resident memory per stored MiB: results of 10 MiB are stored one after
   another and the RSS of every process that could hold them (the gunicorn
   master and worker; redis-server for the Redis store) is read before and
   after; growth / stored MiB. A memory store with ``spool_threshold`` above
   the results' size (bodies held in memory, as before spooling) is the
   contrast.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .services import Gunicorn, RedisServer, rss

MIB = 2**20
APP = "tests.apps.large_app:application"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _get(port: int, method: str, path: str) -> tuple[int, dict[str, str], int, float]:
    """Status, headers, body length and seconds; the body is read and dropped."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        started = time.perf_counter()
        conn.request(method, path, headers={"Connection": "close"})
        response = conn.getresponse()
        size = 0
        while block := response.read(MIB):
            size += len(block)
        return response.status, dict(response.getheaders()), size, time.perf_counter() - started
    finally:
        conn.close()


def _store_result(port: int, size: int) -> str:
    status, headers, _, _ = _get(port, "POST", f"/work/big?size={size}")
    assert status == 202, status
    location = headers["Location"]
    deadline = time.monotonic() + 300
    while True:
        status, headers, _, _ = _get(port, "HEAD", location)
        if status != 202 or not headers.get("Location", "").endswith(location):
            return location
        if time.monotonic() > deadline:
            raise RuntimeError(f"{location} not done in 300 s")
        time.sleep(0.05)


def throughput(port: int, size: int, rounds: int) -> dict[str, Any]:
    location = _store_result(port, size)
    _get(port, "GET", f"/static/big?size={size}")  # the static file is made once, off the clock
    # The first replay apart: with local copies (Redis), it is the one that
    # reads the chunks from Redis and keeps the copy that the rounds replay.
    status, _, got, seconds = _get(port, "GET", location)
    assert status == 200 and got == size, (status, got)
    first = size / MIB / seconds
    paths = {
        "replay": location,
        "static": f"/static/big?size={size}",
        "read": f"/static/big?size={size}&read=1",
    }
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            status, _, got, seconds = _get(port, "GET", path)
            assert status == 200 and got == size, (status, got)
            rates[name].append(size / MIB / seconds)
    replay, static, read = (statistics.median(rates[name]) for name in paths)
    return {
        "first_replay_mib_s": round(first, 1),
        "replay_mib_s": round(replay, 1),
        "static_mib_s": round(static, 1),
        "ratio": round(replay / static, 2),
        "read_mib_s": round(read, 1),
        "read_ratio": round(read / static, 2),
    }


def rss_per_mib(server: Gunicorn, redis_pid: int | None, count: int, size: int) -> dict[str, Any]:
    _get(server.port, "GET", "/status/" + "x" * 32)  # the worker is up
    web_pids = server.pids()
    pids = [*web_pids] if redis_pid is None else [*web_pids, redis_pid]
    before = {pid: rss(pid) for pid in pids}
    for _ in range(count):
        _store_result(server.port, size)
    after = {pid: rss(pid) for pid in pids}
    stored = count * size / MIB
    growth = {pid: (after[pid] - before[pid]) / MIB for pid in pids}
    web = sum(growth[pid] for pid in web_pids)
    row: dict[str, Any] = {"stored_mib": stored, "web_rss_per_mib": round(web / stored, 3)}
    if redis_pid is not None:
        row["redis_rss_per_mib"] = round(growth[redis_pid] / stored, 3)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.large_results", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--stores", default="", help="only these rows, comma-separated (memory,sqlite,redis)"
    )
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.stores.split(",") if name.strip()}
    size = 8 * MIB if args.quick else 100 * MIB
    rounds = 1 if args.quick else 5
    count, each = (2, 2 * MIB) if args.quick else (20, 10 * MIB)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="asyncwsgi-bench-") as tmp, RedisServer() as redis:
        redis_pid = redis.proc.pid
        stores = {
            "memory": ("memory:", {}),
            "sqlite": (f"sqlite:///{tmp}/tasks.db", {}),
            "redis": (redis.url(0), {}),
            "redis with local copies": (f"{redis.url(0)}?local_copies={512 * MIB}", {}),
            "memory, not spooled": ("memory:", {"ASYNCWSGI_TEST_SPOOL_THRESHOLD": str(2**31)}),
        }
        for name, (url, extra) in stores.items():
            if only and name not in only:
                continue
            env = {"ASYNCWSGI_TEST_STORE": url, **extra}
            with Gunicorn(APP, "-w", "1", "--timeout", "300", env=env) as server:
                row: dict[str, Any] = {"store": name}
                if not extra:
                    row.update(throughput(server.port, size, rounds))
                on_redis = name.startswith("redis")
                row.update(rss_per_mib(server, redis_pid if on_redis else None, count, each))
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "replay_size_mib": size / MIB,
        "rounds": rounds,
        "stored": f"{count} x {each // MIB} MiB",
        "rows": rows,
    }
    if not only:
        (args.out / "large_results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| store | first replay MiB/s | replay MiB/s | static MiB/s | replay/static"
        " | file read through Python / static | web RSS per stored MiB"
        " | redis-server RSS per stored MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['store']} | {row.get('first_replay_mib_s', '')}"
            f" | {row.get('replay_mib_s', '')} | {row.get('static_mib_s', '')}"
            f" | {row.get('ratio', '')} | {row.get('read_ratio', '')} | {row['web_rss_per_mib']}"
            f" | {row.get('redis_rss_per_mib', '')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
