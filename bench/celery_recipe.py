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

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .client import alternate, full_cycle, run_load

ROOT = Path(__file__).resolve().parent.parent
#: The WSGI app the asyncwsgi variant's worker runs (the bench's Flask app).
WSGI_APP = "bench.celery_recipe:flask_app"
RECIPE_TASK = "bench.recipe.work"


def make_celery(broker: str, backend: str | None = None) -> Any:
    """The Celery app of either variant: JSON, one task fetched at a time."""
    from celery import Celery

    app = Celery("celery_recipe", broker=broker, backend=backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=RECIPE_TASK)
    def work() -> str:
        return "ok"

    return app


def make_recipe_app(celery_app: Any) -> Any:
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
    def status(task_id: str) -> Any:
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
    from asyncwsgi.executors.celery import CeleryExecutor as _CeleryExecutor

    from .apps import make_flask as _make_flask

    celery_app = make_celery(
        os.environ["BENCH_CELERY_BROKER"], os.environ.get("BENCH_CELERY_BACKEND") or None
    )
    _CeleryExecutor(celery_app, WSGI_APP)
    flask_app = _make_flask()


def _worker(broker: str, backend: str | None) -> subprocess.Popen[bytes]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "BENCH_CELERY_BROKER": broker, "BENCH_CELERY_BACKEND": backend or "",
           "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.celery_recipe:celery_app", "worker",
         "--concurrency", "2", "--loglevel", "warning",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def celery_recipe(cfg: Any) -> dict[str, Any]:
    """Cycles per second and Redis commands per cycle of both variants."""
    import shutil

    import redis

    from .scenarios import row
    from .server import Servers
    from .services import RedisServer, stop_group

    try:
        import celery  # noqa: F401
    except ImportError as exc:
        print(f"scenario 11 skipped: {exc}", flush=True)
        return {"skipped": str(exc), "rows": []}
    if shutil.which("redis-server") is None:
        print("scenario 11 skipped: redis-server is not installed", flush=True)
        return {"skipped": "redis-server is not installed", "rows": []}
    with RedisServer() as ours, RedisServer() as theirs:
        env = {
            "asyncwsgi": {"BENCH_CELERY_BROKER": ours.url(0)},
            "recipe": {"BENCH_CELERY_BROKER": theirs.url(0), "BENCH_CELERY_BACKEND": theirs.url(1)},
        }
        workers = [_worker(ours.url(0), None), _worker(theirs.url(0), theirs.url(1))]
        counters = {
            "asyncwsgi": redis.Redis(port=ours.port),
            "recipe": redis.Redis(port=theirs.port),
        }
        try:
            options = {
                "celery": {"store": ours.url(1), "extra_env": env["asyncwsgi"]},
                "recipe": {"extra_env": env["recipe"]},
            }
            with Servers(*options, options=options) as servers:
                ports = {"asyncwsgi": servers["celery"].port, "recipe": servers["recipe"].port}
                cycle = full_cycle("/p0/task")
                for port in ports.values():  # the workers up, scripts loaded; not counted
                    run_load(port, cycle, 2, 1.0)
                commands: dict[str, list[float]] = {name: [] for name in ports}

                def counted(name: str) -> dict[str, float]:
                    client = counters[name]
                    before = int(client.info("stats")["total_commands_processed"])
                    res = run_load(ports[name], cycle, cfg.clients, cfg.duration)
                    after = int(client.info("stats")["total_commands_processed"])
                    # The first INFO counts itself; the second is not counted yet.
                    commands[name].append((after - before - 1) / max(1, res["count"]))
                    return res

                runs = {name: lambda name=name: counted(name) for name in ports}
                res = alternate(runs, cfg.rounds)
        finally:
            for worker in workers:
                stop_group(worker)
            for client in counters.values():
                client.close()
    import statistics

    per_cycle = {name: statistics.median(values) for name, values in commands.items()}
    a, r = res["asyncwsgi"], res["recipe"]
    return {
        "http": res,
        "redis_commands_per_cycle": per_cycle,
        "redis_commands_rounds": commands,
        "rows": [
            row("11 Celery path vs the Celery recipe", "cycles/s", a["per_s"], "Celery recipe",
                r["per_s"], target=1.2),
            row("11 Celery path vs the Celery recipe", "p50 ms/cycle", a["p50_ms"],
                "Celery recipe", r["p50_ms"], higher=False),
            dict(row("11 Celery path vs the Celery recipe", "Redis commands/cycle (broker "
                     "included; target: at most 30)", per_cycle["asyncwsgi"], "Celery recipe",
                     per_cycle["recipe"]), target=30, target_kind="<=",
                 met=per_cycle["asyncwsgi"] <= 30),
        ],
    }  # fmt: skip
