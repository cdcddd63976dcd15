"""Scenario 11: the Celery path against the classic Celery recipe.

The recipe, as the Celery and Flask docs teach it: a Flask view calls
``task.delay()`` and answers 202 with a ``Location``; the status view
answers 202 until ``AsyncResult(id).ready()``, then ``get()``; Redis is the
broker and the result backend. Beside it, the same Flask app wrapped in
AsyncMiddleware with a ``CeleryExecutor`` and a Redis task store. Each
variant has its own redis-server (broker on db 0, results or task store on
db 1) and its own Celery worker, prefork with ``--concurrency 2`` and the
same configuration; each is served by gunicorn (gthread, 8 threads,
``-w 1``). 8 keep-alive clients submit and poll every 2 ms until the answer
is 200; rounds alternate, medians. Redis commands per cycle are
``total_commands_processed`` of ``INFO stats`` (commands inside scripts
included) before and after each round, on each variant's own server,
divided by the cycles of the round: Celery's broker traffic included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from . import services
from .client import alternate, full_cycle, run_load

if TYPE_CHECKING:
    from flask import Flask

    from .client import Medians
    from .report import Figures, Row
    from .scenarios import Config
    from .server import ServerOptions

ROOT = Path(__file__).resolve().parent.parent
#: The WSGI app the asyncwsgi variant's worker runs (the bench's Flask app).
WSGI_APP = "bench.celery_recipe:flask_app"
RECIPE_TASK = "bench.recipe.work"
#: A file a worker writes the path of its ``asyncwsgi`` into, when set.
PACKAGE_REPORT = "BENCH_PACKAGE_REPORT"


def make_celery(broker: str, backend: str | None = None) -> Any:
    """The Celery app of either variant: JSON, one task fetched at a time.
    (Any: Celery has no type hints.)"""
    app = services.celery_app("celery_recipe", broker, backend)

    def work() -> str:
        return "ok"

    # Registered by a call, not as a decorator: Celery's is untyped.
    app.task(name=RECIPE_TASK)(work)
    return app


def make_recipe_app(celery_app: Any) -> Flask:
    """The recipe's Flask app: the bench's app with its task view replaced by
    ``delay()`` and a status view over ``AsyncResult``."""
    from celery.result import AsyncResult
    from flask import Flask

    from .apps import TASK_PATH, threads_view

    app = Flask("recipe")
    task = celery_app.tasks[RECIPE_TASK]

    @app.get("/hello")
    def hello() -> str:
        return "ok"

    @app.route(TASK_PATH, methods=["GET", "POST"])
    def submit() -> tuple[str, int, dict[str, str]]:
        result = task.delay()
        return "", 202, {"Location": f"/status/{result.id}"}

    @app.get("/status/<task_id>")
    def status(task_id: str) -> Any:  # what the task returned (Celery: no hints)
        result = AsyncResult(task_id, app=celery_app)
        if not result.ready():
            return "", 202, {"Location": f"/status/{task_id}"}
        return result.get()

    app.add_url_rule("/_threads", "threads", threads_view)
    return app


# What the worker of each variant loads (-A bench.celery_recipe:celery_app):
# the broker (and the recipe's result backend) from the environment, and the
# asyncwsgi task registered on the same app.
celery_app = None
flask_app = None
if os.environ.get("BENCH_CELERY_BROKER"):
    from .apps import celery_executor_class as _celery_executor_class
    from .apps import make_flask as _make_flask

    celery_app = make_celery(
        os.environ["BENCH_CELERY_BROKER"], os.environ.get("BENCH_CELERY_BACKEND") or None
    )
    _celery_executor_class()(celery_app, WSGI_APP)
    flask_app = _make_flask()
    if os.environ.get(PACKAGE_REPORT):
        # Which asyncwsgi this worker runs, for the benchmark to check.
        import json as _json

        from .apps import package_origin as _package_origin

        Path(os.environ[PACKAGE_REPORT]).write_text(_json.dumps(_package_origin()))


def _worker(
    broker: str, backend: str | None, path_first: Path | None = None
) -> subprocess.Popen[bytes]:
    from .server import python_path

    env = {**os.environ, "BENCH_CELERY_BROKER": broker, "BENCH_CELERY_BACKEND": backend or "",
           "PYTHONWARNINGS": "ignore", "PYTHONPATH": python_path(path_first)}  # fmt: skip
    if path_first is not None:
        env[PACKAGE_REPORT] = str(_report_file(path_first, broker))
        Path(env[PACKAGE_REPORT]).unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.celery_recipe:celery_app", "worker",
         "--concurrency", "2", "--loglevel", "warning",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        # the working directory goes first on sys.path (python -m): path_first's
        cwd=path_first or ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def _report_file(path_first: Path, broker: str) -> Path:
    return path_first / f"worker-{broker.rsplit(':', 1)[-1].replace('/', '-')}.package"


def _check_worker(worker: subprocess.Popen[bytes], path_first: Path, broker: str) -> None:
    """Wait for the worker started with ``path_first`` to say which asyncwsgi
    it imported; fail unless it is the one in ``path_first``."""
    import time

    from .server import check_package

    report = _report_file(path_first, broker)
    deadline = time.monotonic() + 60
    while not report.exists():
        if worker.poll() is not None:
            raise RuntimeError(f"the Celery worker on {broker} exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Celery worker on {broker} did not start within 60 s")
        time.sleep(0.1)
    time.sleep(0.1)  # the file is written in one call; let it finish
    check_package(json.loads(report.read_text()), path_first, f"the Celery worker on {broker}")


#: The asyncwsgi variants to measure: a label, and the directory put first on
#: ``PYTHONPATH`` of its server and worker (None: this checkout's package).
Versions = dict[str, "Path | None"]


class RecipeRun(TypedDict):
    """What ``measure`` measured."""

    http: dict[str, Medians]
    redis_commands_per_cycle: dict[str, float]
    redis_commands_rounds: dict[str, list[float]]


def measure(cfg: Config, versions: Versions) -> RecipeRun:
    """Alternating rounds of each asyncwsgi variant's Celery path (its own
    redis-server, worker and server) and of the recipe: cycles/s and Redis
    commands per cycle of each, under its label (the recipe's is ``recipe``)."""
    import contextlib
    import statistics

    import redis

    from .server import Servers
    from .services import RedisServer, commands_processed, cpu_seconds, descendants, stop_group

    labels = [*versions, "recipe"]
    workers: list[subprocess.Popen[bytes]] = []
    worker_of: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as stack:
        stores = {label: stack.enter_context(RedisServer()) for label in labels}
        # (Through Any: redis-py before 6 leaves Redis.close unannotated.)
        counters: dict[str, Any] = {label: redis.Redis(port=stores[label].port) for label in labels}
        try:
            options: dict[str, ServerOptions] = {}
            for label, first in versions.items():
                broker = stores[label].url(0)
                workers.append(_worker(broker, None, first))
                worker_of[label] = workers[-1]
                if first is not None:
                    _check_worker(workers[-1], first, broker)
                options[f"celery:{label}"] = {
                    "store": stores[label].url(1), "path_first": first,
                    "extra_env": {"BENCH_CELERY_BROKER": broker},
                }  # fmt: skip
            theirs = stores["recipe"]
            workers.append(_worker(theirs.url(0), theirs.url(1)))
            worker_of["recipe"] = workers[-1]
            options["recipe"] = {"extra_env": {"BENCH_CELERY_BROKER": theirs.url(0),
                                               "BENCH_CELERY_BACKEND": theirs.url(1)}}  # fmt: skip
            with Servers(*options, options=options) as servers:
                ports = {label: servers[f"celery:{label}"].port for label in versions}
                ports["recipe"] = servers["recipe"].port
                web = {label: servers[f"celery:{label}"].proc.pid for label in versions}
                web["recipe"] = servers["recipe"].proc.pid
                cycle = full_cycle("/p0/task")
                for port in ports.values():  # the workers up, scripts loaded; not counted
                    run_load(port, cycle, 2, 1.0)
                commands: dict[str, list[float]] = {label: [] for label in ports}

                def counted(label: str) -> dict[str, float]:
                    client = counters[label]
                    # Each side's processes: the web server, the Celery
                    # worker (its pool's children included), redis-server.
                    sides = {"web": [web[label], *descendants(web[label])],
                             "worker": [worker_of[label].pid, *descendants(worker_of[label].pid)],
                             "redis": [stores[label].proc.pid]}  # fmt: skip
                    cpu = {side: cpu_seconds(pids) for side, pids in sides.items()}
                    before = commands_processed(client)
                    res = run_load(ports[label], cycle, cfg.clients, cfg.duration)
                    after = commands_processed(client)
                    cycles = max(1, res["count"])
                    for side, pids in sides.items():
                        res[f"cpu_ms_{side}"] = (cpu_seconds(pids) - cpu[side]) / cycles * 1e3
                    # The first INFO counts itself; the second is not counted yet.
                    commands[label].append((after - before - 1) / cycles)
                    return res

                runs = {label: lambda label=label: counted(label) for label in ports}
                res = alternate(runs, cfg.rounds)
        finally:
            for worker in workers:
                stop_group(worker)
            for client in counters.values():
                client.close()
    return {
        "http": res,
        "redis_commands_per_cycle": {k: statistics.median(v) for k, v in commands.items()},
        "redis_commands_rounds": commands,
    }


def skipped() -> str | None:
    """Why scenario 11 cannot run here, or None."""
    import shutil

    try:
        import celery  # noqa: F401
    except ImportError as exc:
        return str(exc)
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    return None


def celery_recipe(cfg: Config) -> Figures:
    """Cycles per second and Redis commands per cycle of both variants."""
    from .scenarios import row

    why = skipped()
    if why is not None:
        print(f"scenario 11 skipped: {why}", flush=True)
        return {"skipped": why, "rows": []}
    measured = measure(cfg, {"asyncwsgi": None})
    res, per_cycle = measured["http"], measured["redis_commands_per_cycle"]
    a, r = res["asyncwsgi"], res["recipe"]
    commands: Row = row("11 Celery path vs the Celery recipe", "Redis commands/cycle (broker "
                        "included; target: at most 30)", per_cycle["asyncwsgi"], "Celery recipe",
                        per_cycle["recipe"])  # fmt: skip
    commands.update({"target": 30, "target_kind": "<=", "met": per_cycle["asyncwsgi"] <= 30})
    return {
        **measured,
        "rows": [
            row("11 Celery path vs the Celery recipe", "cycles/s", a["per_s"], "Celery recipe",
                r["per_s"], target=1.2),
            row("11 Celery path vs the Celery recipe", "p50 ms/cycle", a["p50_ms"],
                "Celery recipe", r["p50_ms"], higher=False),
            commands,
            row("11 Celery path vs the Celery recipe", "requests/cycle (the submit and its polls)",
                a["requests_per_unit"], "Celery recipe", r["requests_per_unit"], higher=False),
            *[row("11 Celery path vs the Celery recipe", f"CPU ms/cycle, {what}",
                  a[f"cpu_ms_{side}"], "Celery recipe", r[f"cpu_ms_{side}"], higher=False)
              for side, what in (("web", "web server (gunicorn -w 1)"),
                                 ("worker", "Celery worker (prefork, 2)"),
                                 ("redis", "redis-server"))],
        ],
    }  # fmt: skip
