"""The eight scenarios. Each returns a dict with its figures and table rows."""

from __future__ import annotations

import functools
import gc
import queue
import shutil
import statistics
import tempfile
import threading
import time
import timeit
import tracemalloc
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from asyncwsgi import AsyncMiddleware
from asyncwsgi.stores.memory import MemoryStore

from . import apps, observability_cost
from .client import (
    Conn,
    Medians,
    Tally,
    alternate,
    checked_cycle,
    floor_cycle,
    full_cycle,
    get,
    location_of,
    run_load,
    waited,
)
from .report import Figures, Row
from .server import Server, ServerOptions, Servers
from .services import RedisServer, commands_processed
from .stand_ins import Inline, call, noop_start_response, trivial_app

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

#: A config of ``alternate``: one round of it, its figures.
Run = Callable[[], dict[str, float]]


@dataclass
class Config:
    quick: bool
    duration: float  # seconds per load round
    rounds: int
    clients: int = 8
    timeit_number: int = 100_000
    many_tasks: int = 100_000
    burst: int = 10_000
    celery_tasks: int = 100
    celery_rounds: int = 5
    celery_cpu_ms: float = 20.0

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, 0.4, 2, timeit_number=20_000, many_tasks=10_000, burst=1_000,
                       celery_tasks=20, celery_rounds=2)  # fmt: skip
        return cls(False, 3.0, 5)


def row(
    scenario: str,
    metric: str,
    value: float,
    baseline_name: str,
    baseline: float | None,
    ratio: float | None = None,
    target: float | None = None,
    higher: bool = True,
) -> Row:
    if ratio is None and baseline:
        ratio = value / baseline
    met = None
    if target is not None and ratio is not None:
        met = ratio >= target if higher else ratio <= target
    return {
        "scenario": scenario,
        "metric": metric,
        "asyncwsgi": value,
        "baseline": baseline_name,
        "baseline_value": baseline,
        "ratio": ratio,
        "target": target,
        "target_kind": ">=" if higher else "<=",
        "met": met,
    }


def _load(port: int, unit: Callable[[Conn], None], cfg: Config) -> Run:
    """A round of ``unit`` on ``port``: ``cfg.clients`` clients for ``cfg.duration``."""
    return lambda: run_load(port, unit, cfg.clients, cfg.duration)


def _warm(port: int, path: str, headers: dict[str, str] | None = None, expect: int = 200) -> None:
    run_load(port, get(path, headers, expect), 2, 0.2)


# -- (1) pass-through --------------------------------------------------------


#: The asyncwsgi servers of scenarios 1 to 3: a label and a server's name.
#: ``bench.versions`` gives two (the version before and this one).
ASYNC = {"asyncwsgi": "async"}
#: Scenarios 2 and 3 also serve the same middleware with each job run in the
#: request's own thread before it is answered (``bench.stand_ins.Inline``):
#: what the pool's hand-off costs over HTTP, beside what the rest costs.
INLINE = "asyncwsgi, run inline"
#: And the least any layer running the app on a pool could do
#: (``bench.stand_ins.least``): how much of a gap the hand-off alone explains.
LEAST = "stand-in: the least a pool could do"
WITH_INLINE = {**ASYNC, INLINE: "async:inline", LEAST: "least"}


def pass_through_http(
    servers: Servers, cfg: Config, variants: dict[str, str] = ASYNC
) -> dict[str, Medians]:
    """Alternating rounds of GET /hello: each of ``variants``, bare, and a
    second bare server (the A/A spread shows how much two identical servers
    differ here)."""
    ports = {label: servers[name].port for label, name in variants.items()}
    ports["bare"] = servers["bare"].port
    ports["bare (A/A control)"] = servers["bare:control"].port
    for port in ports.values():
        _warm(port, "/hello")
    return alternate(
        {label: _load(port, get("/hello"), cfg) for label, port in ports.items()},
        cfg.rounds,
    )


def pass_through(servers: Servers, cfg: Config) -> Figures:
    res = pass_through_http(servers, cfg)

    # In process: ns added per pass-through call, against an empty wrapper.
    mw = AsyncMiddleware(trivial_app, paths=apps.PATTERNS)
    empty = lambda e, s: trivial_app(e, s)  # noqa: E731 (the baseline is a lambda)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/hello", "SCRIPT_NAME": ""}
    sr = noop_start_response
    n = cfg.timeit_number
    times: dict[str, list[float]] = {"mw": [], "empty": []}
    for r in range(5):
        order = ("mw", "empty") if r % 2 == 0 else ("empty", "mw")
        for name in order:
            fn = mw if name == "mw" else empty
            call = lambda fn=fn: fn(environ, sr)  # noqa: E731
            times[name].append(timeit.timeit(call, number=n) / n)
    mw.close()
    mw_ns = statistics.median(times["mw"]) * 1e9
    empty_ns = statistics.median(times["empty"]) * 1e9
    return {
        "http": res,
        "inprocess_ns": {"asyncwsgi": mw_ns, "empty_wrapper": empty_ns, "added": mw_ns - empty_ns},
        "rows": [
            row("1 pass-through", "req/s", res["asyncwsgi"]["per_s"], "bare",
                res["bare"]["per_s"], target=0.98),
            row("1 pass-through", "req/s, A/A control (noise)", res["bare (A/A control)"]["per_s"],
                "bare", res["bare"]["per_s"]),
            row("1 pass-through", f"ns/call in-process (+{mw_ns - empty_ns:.0f} ns)", mw_ns,
                "empty wrapper", empty_ns),
        ],
    }  # fmt: skip


# -- (2) full cycle ----------------------------------------------------------


def full_cycle_http(
    servers: Servers, cfg: Config, variants: dict[str, str] = ASYNC
) -> dict[str, Medians]:
    """Alternating rounds of full cycles: each of ``variants``, the naive
    recipe, and the floor."""
    cycle = full_cycle(apps.TASK_PATH)
    # The floor: the bare app answering the same two requests per task, with
    # the same sleep between them; no middleware can do better on this server.
    floor = floor_cycle(apps.TASK_PATH, "/hello")
    units = {label: (servers[name].port, cycle) for label, name in variants.items()}
    units["naive"] = (servers["naive"].port, cycle)
    units["floor"] = (servers["bare"].port, floor)
    for port, unit in units.values():
        run_load(port, unit, 2, 0.2)
    return alternate(
        {label: _load(port, unit, cfg) for label, (port, unit) in units.items()},
        cfg.rounds,
    )


def full_cycle_scenario(servers: Servers, cfg: Config) -> Figures:
    res = full_cycle_http(servers, cfg, WITH_INLINE)
    return {
        "http": res,
        "rows": [
            row("2 full cycle", "tasks/s", res["asyncwsgi"]["per_s"], "naive",
                res["naive"]["per_s"]),
            row("2 full cycle", "p50 ms/task", res["asyncwsgi"]["p50_ms"], "naive",
                res["naive"]["p50_ms"], target=None, higher=False),
            row("2 full cycle", "tasks/s vs the floor: 2 bare requests per task "
                f"(floor/naive {res['floor']['per_s'] / res['naive']['per_s']:.2f})",
                res["asyncwsgi"]["per_s"], "floor", res["floor"]["per_s"], target=1.0),
            row("2 full cycle", "tasks/s, each job run inline (no pool hand-off)",
                res[INLINE]["per_s"], "floor", res["floor"]["per_s"]),
            row("2 full cycle", "tasks/s, stand-in: the app on a pool thread, its response "
                "in a dict, nothing else (the least a pool could do)",
                res[LEAST]["per_s"], "floor", res["floor"]["per_s"]),
        ],
    }  # fmt: skip


# -- (3) Prefer: wait=5 --------------------------------------------------------


def prefer_wait_http(
    servers: Servers, cfg: Config, variants: dict[str, str] = ASYNC
) -> dict[str, Medians]:
    """Alternating rounds of the task view with ``Prefer: wait=5``: each of
    ``variants``, and the bare app's view called directly."""
    # At the default max_waiting: a request the process does not let wait
    # gets a 202 and long-polls its Location (bench.client.waited).
    units = {label: (servers[name].port, waited(apps.TASK_PATH))
             for label, name in variants.items()}  # fmt: skip
    units["bare"] = (servers["bare"].port, get(apps.TASK_PATH))
    for port, unit in units.values():
        run_load(port, unit, 2, 0.2)
    return alternate(
        {label: _load(port, unit, cfg) for label, (port, unit) in units.items()},
        cfg.rounds,
    )


def prefer_wait(servers: Servers, cfg: Config) -> Figures:
    res = prefer_wait_http(servers, cfg, WITH_INLINE)
    cost = _prefer_wait_in_process(cfg)
    return {
        "http": res,
        "inprocess_us": cost,
        "rows": [
            row("3 Prefer: wait=5", "req/s", res["asyncwsgi"]["per_s"], "bare",
                res["bare"]["per_s"], target=0.80),
            row("3 Prefer: wait=5", "req/s, each job run inline (no hand-off)",
                res[INLINE]["per_s"], "bare", res["bare"]["per_s"]),
            row("3 Prefer: wait=5", "req/s, stand-in: the app on a pool thread, its response "
                "handed back, nothing else (the least a hand-off could do)",
                res[LEAST]["per_s"], "bare", res["bare"]["per_s"]),
            row("3 Prefer: wait=5", "p50 ms/req", res["asyncwsgi"]["p50_ms"], "bare",
                res["bare"]["p50_ms"], higher=False),
            row("3 Prefer: wait=5", "us/req in-process, through the pool", cost["pool"],
                "app alone", cost["app"]),
            row("3 Prefer: wait=5", "us/req in-process, run inline (no hand-off)", cost["inline"],
                "app alone", cost["app"]),
            row("3 Prefer: wait=5", "us/req the pool adds (pool - inline) vs thread ping-pong",
                cost["pool"] - cost["inline"], "ping-pong", cost["ping_pong"]),
        ],
    }  # fmt: skip


def _prefer_wait_in_process(cfg: Config) -> dict[str, float]:
    """Microseconds per fast task, one caller, direct WSGI calls: the Flask app
    alone, through the middleware and its pool, through the middleware with
    the job run inline; and a round trip between two threads (two hand-offs,
    what the pool adds per task)."""
    flask_app = apps.make_flask()
    pooled = apps.make_async()
    inline = apps.make_async(executor=Inline())
    environ = dict(_SUBMIT_ENVIRON, REQUEST_METHOD="GET", PATH_INFO=apps.TASK_PATH,
                   HTTP_PREFER="wait=5")  # fmt: skip
    environ.pop("CONTENT_LENGTH")
    n = cfg.timeit_number // 10

    def per_call(app: WSGIApplication) -> float:
        def once() -> None:
            status, _ = _call(app, dict(environ))
            if not status.startswith("200"):
                raise RuntimeError(f"{status} from a fast task with Prefer: wait=5")

        for _ in range(200):
            once()
        return statistics.median(timeit.repeat(once, number=n, repeat=5)) / n * 1e6

    there: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        while (item := there.get()) is not None:
            back.put(item)

    echoer = threading.Thread(target=echo, daemon=True)
    echoer.start()

    def ping_pong() -> None:
        there.put(1)
        back.get()

    ping = statistics.median(timeit.repeat(ping_pong, number=n, repeat=5)) / n * 1e6
    there.put(None)
    echoer.join()
    try:
        return {"app": per_call(flask_app), "pool": per_call(pooled),
                "inline": per_call(inline), "ping_pong": ping}  # fmt: skip
    finally:
        pooled.close()
        inline.close()


# -- (4) many tasks (in process) ---------------------------------------------


def _call(mw: WSGIApplication, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]]]:
    status, headers, _ = call(mw, environ)
    return status, headers


def _fill(n: int, keep: int = 200) -> tuple[AsyncMiddleware, list[str]]:
    mw = AsyncMiddleware(
        trivial_app, paths=["/t/*"], store=MemoryStore(), max_pending=n + 10, result_ttl=86400
    )
    ids: list[str] = []
    for i in range(n):
        environ = dict(_SUBMIT_ENVIRON, PATH_INFO=f"/t/{i}")
        status, headers = _call(mw, environ)
        if not status.startswith("202"):
            raise RuntimeError(f"submit {i} answered {status}")
        if len(ids) < keep:
            ids.append(dict(headers)["Location"])
    mw.close(timeout=600)
    return mw, ids


class _Empty:
    def read(self, *args: object) -> bytes:
        return b""

    def readline(self, *args: object) -> bytes:
        return b""


_EMPTY = _Empty()
_SUBMIT_ENVIRON: WSGIEnvironment = {
    "REQUEST_METHOD": "POST",
    "SCRIPT_NAME": "",
    "wsgi.input": _EMPTY,
    "CONTENT_LENGTH": "0",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "80",
    "wsgi.url_scheme": "http",
    "SERVER_PROTOCOL": "HTTP/1.1",
}


def many_tasks(cfg: Config) -> Figures:
    n = cfg.many_tasks
    small, small_ids = _fill(10)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    big, big_ids = _fill(n)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    body_len = 2
    per_task = (after - before) / n - body_len

    def polls(mw: AsyncMiddleware, ids: list[str], count: int) -> float:
        environs = [{"REQUEST_METHOD": "GET", "PATH_INFO": loc, "SCRIPT_NAME": ""} for loc in ids]
        k = len(environs)
        t0 = time.perf_counter()
        for i in range(count):
            _call(mw, environs[i % k])
        return count / (time.perf_counter() - t0)

    status, _ = _call(big, {"REQUEST_METHOD": "GET", "PATH_INFO": big_ids[-1], "SCRIPT_NAME": ""})
    if not status.startswith("200"):
        raise RuntimeError(f"a finished task's status answered {status}")
    count = 5_000 if cfg.quick else 30_000
    rates: dict[str, list[float]] = {"big": [], "small": []}
    for r in range(5):
        for name in ("big", "small") if r % 2 == 0 else ("small", "big"):
            mw, ids = (big, big_ids) if name == "big" else (small, small_ids)
            rates[name].append(polls(mw, ids, count))
    big_rate, small_rate = statistics.median(rates["big"]), statistics.median(rates["small"])
    return {
        "stored": n,
        "polls_per_s": {"stored_n": big_rate, "stored_10": small_rate},
        "bytes_per_task": per_task,
        "rows": [
            row("4 many tasks", f"polls/s, {n:,} vs 10 stored", big_rate, "10 stored",
                small_rate, target=0.95),
            row("4 many tasks", "bytes/finished task beyond body", per_task, "1 KiB", 1024.0,
                target=1.0, higher=False),
        ],
    }  # fmt: skip


# -- (5) burst ----------------------------------------------------------------


def _burst_one(
    server: Server, total: int, clients: int = 16, timeout: float = 300.0
) -> dict[str, float]:
    baseline = server.threads()
    peak = {"threads": baseline["threads"], "os_threads": baseline["os_threads"]}
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            try:
                info = server.threads()
            except OSError:
                continue
            peak["threads"] = max(peak["threads"], info["threads"])
            peak["os_threads"] = max(peak["os_threads"], info["os_threads"])
            stop.wait(0.01)

    counter = iter(range(total))
    lock = threading.Lock()
    locations: list[str] = []
    errors: list[BaseException] = []

    def submitter() -> None:
        conn = Conn(server.port)
        try:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                status, response, _ = conn.request("POST", apps.SLOW_PATH)
                if status != 202:
                    raise RuntimeError(f"submit answered {status}")
                location = location_of(response)
                with lock:
                    locations.append(location)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    pending: list[str] = []
    done = [0]

    def completer() -> None:
        conn = Conn(server.port)
        deadline = time.monotonic() + timeout
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    location = pending.pop()
                while time.monotonic() < deadline:
                    status, _, _ = conn.request("GET", location)
                    if status == 200:
                        with lock:
                            done[0] += 1
                        break
                    if status != 202:
                        raise RuntimeError(f"poll answered {status}")
                    time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    sample = threading.Thread(target=sampler, daemon=True)
    sample.start()
    t0 = time.perf_counter()
    workers = [threading.Thread(target=submitter, daemon=True) for _ in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout)
    submitted = time.perf_counter() - t0
    pending.extend(locations)
    workers = [threading.Thread(target=completer, daemon=True) for _ in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout)
    finished = time.perf_counter() - t0
    stop.set()
    sample.join(5)
    final = server.threads()
    if errors:
        raise RuntimeError(f"burst against {server.kind} failed: {errors[0]!r}") from errors[0]
    return {
        "submitted": len(locations),
        "completed": done[0],
        "all_complete": done[0] == total,
        "submit_s": submitted,
        "all_done_s": finished,
        "peak_threads": peak["threads"],
        "peak_os_threads": peak["os_threads"],
        "idle_threads": baseline["threads"],
        "rss_before_kib": baseline["rss_kib"],
        "peak_rss_kib": final["hwm_kib"],
    }


def burst(cfg: Config) -> Figures:
    with Servers("async", "naive") as servers:
        for kind in ("async", "naive"):
            _warm(servers[kind].port, "/hello")
        res = {
            "asyncwsgi": _burst_one(servers["async"], cfg.burst),
            "naive": _burst_one(servers["naive"], cfg.burst),
        }
    a, n = res["asyncwsgi"], res["naive"]
    label = f"{cfg.burst:,} x 10 ms"
    return {
        "burst": res,
        "rows": [
            row("5 burst " + label, "peak live threads", a["peak_threads"], "naive",
                n["peak_threads"], higher=False),
            row("5 burst " + label, "peak RSS MiB", a["peak_rss_kib"] / 1024, "naive",
                n["peak_rss_kib"] / 1024, higher=False),
            row("5 burst " + label, "all complete (done/submitted)", a["completed"], "naive",
                n["completed"], target=1.0),
            row("5 burst " + label, "s until all done", a["all_done_s"], "naive",
                n["all_done_s"], higher=False),
        ],
    }  # fmt: skip


# -- (6) shared stores ----------------------------------------------------------


def _checked_load(port: int, tally: Tally, cfg: Config) -> dict[str, float]:
    before = dict(tally.counts)
    res = run_load(port, checked_cycle(apps.TASK_PATH, tally), cfg.clients, cfg.duration)
    completed = tally.counts["completed"] - before["completed"]
    elapsed = res["count"] / res["per_s"] if res["per_s"] else float("nan")
    # run_load counts every cycle; only the completed ones count as tasks/s.
    return dict(res, per_s=completed / elapsed, cycles=res["count"], completed=completed)


class RedisCommands:
    """Commands a redis-server ran during a run: ``total_commands_processed``
    of ``INFO stats`` (commands inside scripts included) before and after,
    the first INFO itself taken off; every round's count per unit is kept."""

    def __init__(self, port: int) -> None:
        import redis as redis_py

        # (Through Any: redis-py before 6 leaves Redis.close unannotated.)
        self.client: Any = redis_py.Redis(port=port)
        self.per_unit: list[float] = []

    def _total(self) -> int:
        return commands_processed(self.client)

    def around(self, run: Run, units: Callable[[dict[str, float]], float]) -> dict[str, float]:
        """``run()``'s result; its commands divided by ``units(result)``."""
        before = self._total()
        result = run()
        after = self._total()
        self.per_unit.append((after - before - 1) / max(1, units(result)))
        return result

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RedisCommands:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _completed(res: dict[str, float]) -> float:
    return res["completed"]


class StoresRun(TypedDict):
    """What ``shared_stores_http`` measured."""

    http: dict[str, Medians]
    tallies: dict[str, Tally]
    redis_commands_per_task: dict[str, float]
    skipped: str | None


def shared_stores_http(cfg: Config, versions: dict[str, Path | None] | None = None) -> StoresRun:
    """Alternating rounds of checked cycles on the memory store (gunicorn -w 1),
    SQLite and Redis (-w 4, a redis-server of its own) for each of ``versions``:
    a suffix of the names, and the directory put first on the servers'
    ``PYTHONPATH`` (None: this checkout's asyncwsgi). The HTTP figures, the
    tallies and Redis commands per task of each round under those names."""
    versions = versions or {"": None}
    skipped = None
    if shutil.which("redis-server") is None:
        skipped = "redis-server is not installed: the RedisStore run was skipped"
        print(f"scenario 6: {skipped}", flush=True)
    kinds = ["memory -w 1", "SQLite -w 4"] + ([] if skipped else ["Redis -w 4"])
    names = [kind + suffix for kind in kinds for suffix in versions]
    tallies = {name: Tally() for name in names}
    commands: dict[str, RedisCommands] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stores-") as tmp, ExitStack() as stack:
        options: dict[str, ServerOptions] = {}
        for i, (suffix, first) in enumerate(versions.items()):
            options[f"memory -w 1{suffix}"] = {"workers": 1, "path_first": first}
            options[f"SQLite -w 4{suffix}"] = {
                "workers": 4, "store": f"sqlite:///{tmp}/tasks{i}.db", "path_first": first
            }  # fmt: skip
            if not skipped:
                # A server of its own: its command count is this version's alone.
                redis = stack.enter_context(RedisServer())
                options[f"Redis -w 4{suffix}"] = {
                    "workers": 4, "store": redis.url(0), "path_first": first
                }  # fmt: skip
                commands[f"Redis -w 4{suffix}"] = stack.enter_context(RedisCommands(redis.port))
        server_of = {name: f"async:{i}" for i, name in enumerate(names)}
        with Servers(*server_of.values(), options={
            server_of[name]: options[name] for name in names
        }) as servers:  # fmt: skip
            ports = {name: servers[server_of[name]].port for name in names}
            for port in ports.values():  # warm up every worker; not counted
                run_load(port, checked_cycle(apps.TASK_PATH, Tally()), cfg.clients, 0.5)
            runs: dict[str, Run] = {
                name: functools.partial(_checked_load, port, tallies[name], cfg)
                for name, port in ports.items()
            }
            for name, counter in commands.items():
                # Every command the store's server ran in the round (the
                # four workers' sweeps and janitors included), per task.
                runs[name] = functools.partial(counter.around, runs[name], _completed)
            res = alternate(runs, cfg.rounds)
    return {
        "http": res,
        "tallies": tallies,
        "redis_commands_per_task": {
            name: statistics.median(c.per_unit) for name, c in commands.items()
        },
        "skipped": skipped,
    }


def shared_stores(cfg: Config) -> Figures:
    measured = shared_stores_http(cfg)
    res, tallies, skipped = measured["http"], measured["tallies"], measured["skipped"]
    names = list(tallies)
    base = res["memory -w 1"]
    rows = []
    for name in names[1:]:
        rows.append(row("6 shared stores", f"tasks/s, {name}", res[name]["per_s"],
                        "memory -w 1", base["per_s"]))  # fmt: skip
    per_task = measured["redis_commands_per_task"].get("Redis -w 4")
    if per_task is not None:
        r = row("6 shared stores", "Redis commands/task, Redis -w 4 (all the server ran)",
                per_task, "-", None)  # fmt: skip
        rows.append(r)
    base_lost = tallies["memory -w 1"].lost
    for name in names[1:]:
        lost = tallies[name].lost
        total = lost + tallies[name].counts["completed"]
        r = row("6 shared stores", f"lost of {total:,} (404, wrong body, other), {name}", lost,
                "memory -w 1", base_lost)  # fmt: skip
        r.update({"ratio": None, "target": 0, "target_kind": "==",
                  "met": lost == 0 and base_lost == 0})  # fmt: skip
        rows.append(r)
    return {
        "http": res,
        "client": "fresh connection per request (Connection: close), poll every 2 ms",
        "outcomes": {name: dict(t.counts) for name, t in tallies.items()},
        "redis_commands_per_task": per_task,
        "skipped": skipped,
        "rows": rows,
    }


# -- (7) Engines: Celery, RQ, Django Tasks -------------------------------------


def celery(cfg: Config) -> Figures:
    """Tasks per second on 1 and 2 worker processes of each engine, one run."""
    try:
        from . import engines_bench
    except ImportError as exc:
        print(f"scenario 7 skipped: {exc}", flush=True)
        return {"skipped": str(exc), "rows": []}
    if shutil.which("redis-server") is None:
        print("scenario 7 skipped: redis-server is not installed", flush=True)
        return {"skipped": "redis-server is not installed", "rows": []}
    res = engines_bench.measure(cfg.celery_tasks, cfg.celery_rounds, cfg.celery_cpu_ms)
    label = f"{cfg.celery_tasks} x {cfg.celery_cpu_ms:g} ms CPU"
    rows = []
    for name, figures in res["engines"].items():
        one, two = figures["median"]["one"], figures["median"]["two"]
        rows.append(row(f"7 {name} {label}", "tasks/s, 2 workers vs 1", two, "1 worker", one))
    return {"engines": res, "rows": rows}


# -- (8) metrics and tracing on ------------------------------------------------


def observability(servers: Servers, cfg: Config) -> Figures:
    """The same app off (the metrics and tracing extras not installed), with
    metrics on (prometheus_client, metrics_path; the OpenTelemetry API there
    but no tracer provider set) and traced too (the OpenTelemetry SDK
    recording every task's three spans): pass-through and full cycle,
    alternating. The target is within 3 % of off. Beside them, full cycles
    of a server where the SDK makes the same three spans per task but
    asyncwsgi's tracing is left out: what the SDK alone costs."""
    servers_of = {"off": "async", "metrics": "async:metrics", "traced": "async:traced",
                  "spans": "async:spans"}  # fmt: skip
    ports = {name: servers[server].port for name, server in servers_of.items()}
    cycle = full_cycle(apps.TASK_PATH)
    for name, port in ports.items():
        _warm(port, "/hello")
        run_load(port, cycle, 2, 0.2)
        if name != "off" and _scrape(port)[0] != 200:
            raise RuntimeError(f"metrics_path did not answer on the {name} server")
    configs = {}
    for name, port in ports.items():
        if name != "spans":  # no tracing work in a pass-through, of either kind
            configs[f"pass-through {name}"] = lambda port=port: run_load(
                port, get("/hello"), cfg.clients, cfg.duration
            )
        configs[f"full cycle {name}"] = lambda port=port: run_load(
            port, cycle, cfg.clients, cfg.duration
        )
    res = alternate(configs, cfg.rounds)
    # In process: ns per pass-through call with a metrics_path and without.
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/hello", "SCRIPT_NAME": ""}
    plain = AsyncMiddleware(trivial_app, paths=apps.PATTERNS)
    metered = AsyncMiddleware(trivial_app, paths=apps.PATTERNS, metrics_path="/metrics")
    n = cfg.timeit_number
    ns: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(5):
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
            fn = plain if name == "off" else metered
            call = lambda fn=fn: fn(environ, noop_start_response)  # noqa: E731
            ns[name].append(timeit.timeit(call, number=n) / n * 1e9)
    plain.close()
    metered.close()
    ns_off, ns_on = statistics.median(ns["off"]), statistics.median(ns["on"])
    rows = []
    for name, label in (("metrics", "metrics on"), ("traced", "metrics+tracing on")):
        for kind, unit in (("pass-through", "req/s"), ("full cycle", "tasks/s")):
            rows.append(row(f"8 {label}", f"{kind} {unit}", res[f"{kind} {name}"]["per_s"],
                            "off", res[f"{kind} off"]["per_s"], target=0.97))  # fmt: skip
    rows.append(row("8 metrics on + the SDK's 3 spans per task, no asyncwsgi tracing",
                    "full cycle tasks/s", res["full cycle spans"]["per_s"],
                    "off", res["full cycle off"]["per_s"]))  # fmt: skip
    rows.append(row("8 metrics+tracing on", "full cycle tasks/s, vs the SDK's spans alone",
                    res["full cycle traced"]["per_s"],
                    "SDK spans alone", res["full cycle spans"]["per_s"]))  # fmt: skip
    rows.append(row("8 metrics on", "pass-through ns/call in-process, metrics_path set",
                    ns_on, "not set", ns_off))  # fmt: skip
    # In process, CPU per task (submitted and run inline): robust on a busy
    # machine, where the HTTP rounds above vary by more than the 3 % sought.
    cpu = observability_cost.compare(rounds=1 if cfg.quick else 3)
    for mode, label in (
        ("metrics", "metrics on (tracing installed, no provider)"),
        ("traced", "metrics+tracing on (SDK, every task)"),
        ("sampled", "metrics+tracing on (SDK, 10% sampled)"),
        # What tracing every task costs, split: the SDK's own three spans, and
        # asyncwsgi's work around them (the latter measured in one process).
        ("spans", "the SDK alone: a task's 3 spans, no middleware"),
        ("own", "asyncwsgi's tracing work beyond the SDK's spans"),
    ):
        rows.append(row(f"8 {label}", "CPU us/task in-process (lower is better)", cpu[mode],
                        "off", cpu["off"], higher=False))  # fmt: skip
    return {"http": res, "cpu_us_per_task": cpu, "rows": rows}


def _scrape(port: int) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()
