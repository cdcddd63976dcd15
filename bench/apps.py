"""The apps the benchmark serves: one Flask app, bare, wrapped and naive.

gunicorn loads ``bench.apps:app``; ``BENCH_APP`` picks the variant
(``bare``, ``async``, ``naive`` or ``least``); ``BENCH_STORE`` (a store URL) gives the
``async`` variant a shared store instead of its own ``MemoryStore``;
``BENCH_EXECUTOR=inline`` runs each of its jobs in the request's thread;
``least`` is :func:`bench.stand_ins.least` over the same app.
``BENCH_OBSERVE`` turns observability on in the ``async`` variant:
``metrics`` (prometheus_client and ``metrics_path``; the OpenTelemetry API
installed, no tracer provider set) or ``traced`` (that, and the SDK with a
batch processor recording every task's spans), or ``spans`` (as ``traced``,
but asyncwsgi's tracing left out and the SDK's three bare spans made in each
task instead: what the SDK itself costs, side by side). Without it the server
runs as if the ``metrics`` and ``tracing`` extras were not installed: "off".
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if (os.environ.get("BENCH_APP") or os.environ.get("BENCH_CELERY_BROKER")) and not os.environ.get(
    "BENCH_OBSERVE"
):
    # Before asyncwsgi is imported: as installed without the optional extras,
    # in the servers and in scenario 11's Celery workers (which import this
    # module through bench.celery_recipe) alike. (None in sys.modules makes
    # an import fail, as Python documents; typeshed types the values as modules.)
    sys.modules["prometheus_client"] = None  # type: ignore[assignment]
    sys.modules["opentelemetry"] = None  # type: ignore[assignment]

from flask import Flask, Response, jsonify

import asyncwsgi
from asyncwsgi import AsyncMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask.typing import ResponseReturnValue
    from opentelemetry.sdk.trace import ReadableSpan

    #: A Flask view; Any: Flask passes a route's variables as arguments.
    View = Callable[..., ResponseReturnValue]

N_GLOBS = 50
N_RULES = 50
PATTERNS = [f"/p{i}/*" for i in range(N_GLOBS)] + [f"/r{i}/<int:x>" for i in range(N_RULES)]
# The task path is marked by the first glob, so the middleware keeps 100 patterns.
TASK_PATH = "/p0/task"
SLOW_PATH = "/p0/slow"
SLOW_SECONDS = 0.010


def proc_status() -> dict[str, int]:
    """Current and peak RSS (KiB) and OS thread count of this process (Linux)."""
    out = {"rss_kib": 0, "hwm_kib": 0, "os_threads": 0}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name == "VmRSS":
                    out["rss_kib"] = int(value.split()[0])
                elif name == "VmHWM":
                    out["hwm_kib"] = int(value.split()[0])
                elif name == "Threads":
                    out["os_threads"] = int(value)
    except OSError:
        pass
    return out


def package_origin() -> dict[str, object]:
    """Which copy of asyncwsgi this process runs (``bench.versions`` checks
    it): its ``__init__`` file, and the names of its modules loaded from
    anywhere else (an editable install's finder supplies a module that the
    imported copy lacks from the installed checkout)."""
    home = Path(asyncwsgi.__file__).parent
    strays = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name.startswith("asyncwsgi.") and file and not Path(file).is_relative_to(home):
            strays.append(name)
    strays.sort()
    return {"asyncwsgi": asyncwsgi.__file__, "asyncwsgi_strays": strays}


def threads_view() -> Response:
    return jsonify(threads=threading.active_count(), pid=os.getpid(),
                   **package_origin(), **proc_status())  # fmt: skip


def celery_executor_class() -> type:
    """``CeleryExecutor`` of the running asyncwsgi: in ``executors`` now, in
    ``contrib`` before the lean-core split (``bench.versions`` runs both)."""
    # Decided by the package's own files, not by trying the import: an
    # editable install's finder would supply a missing submodule from the
    # installed checkout, another version.
    if (Path(asyncwsgi.__file__).parent / "executors").is_dir():
        from asyncwsgi.executors.celery import CeleryExecutor
    else:
        from asyncwsgi.contrib.celery import CeleryExecutor
    return CeleryExecutor


def _as_is(view: View) -> View:
    return view


def make_flask(wrap_task: Callable[[View], View] | None = None) -> Flask:
    """The same Flask app for every variant; ``wrap_task`` decorates the task views."""
    app = Flask("bench")
    wrap = wrap_task or _as_is

    @app.get("/hello")
    def hello() -> str:
        return "ok"

    @app.route(TASK_PATH, methods=["GET", "POST"])
    @wrap
    def task() -> str:
        return "ok"

    @app.route(SLOW_PATH, methods=["GET", "POST"])
    @wrap
    def slow() -> str:
        time.sleep(SLOW_SECONDS)
        return "done"

    app.add_url_rule("/_threads", "threads", threads_view)
    return app


# -- naive: the thread-per-request recipe ---------------------------------

RESULTS: dict[str, Response | None] = {}


def make_naive() -> Flask:
    """A thread per request, a global dict of results, a status route in the app."""
    holder: dict[str, Flask] = {}

    def background(view: View) -> View:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            from flask import request

            task_id = uuid.uuid4().hex
            environ = dict(request.environ)
            app = holder["app"]

            def run() -> None:
                with app.request_context(environ):
                    RESULTS[task_id] = app.make_response(view(*args, **kwargs))

            RESULTS[task_id] = None
            threading.Thread(target=run, daemon=True).start()
            return "", 202, {"Location": f"/status/{task_id}"}

        return wrapped

    app = make_flask(background)
    holder["app"] = app

    @app.get("/status/<task_id>")
    def status(task_id: str) -> ResponseReturnValue:
        if task_id not in RESULTS:
            return "no such task\n", 404
        result = RESULTS[task_id]
        if result is None:
            return "", 202, {"Location": f"/status/{task_id}"}
        return result

    return app


def make_async(inner: WSGIApplication | None = None, **options: Any) -> AsyncMiddleware:
    """``inner`` (by default the Flask app) wrapped; ``options`` are
    AsyncMiddleware's (Any: each option has a type of its own)."""
    # max_waiting at its default: the Prefer: wait scenario measures what a
    # deployment gets without tuning.
    settings: dict[str, Any] = {"paths": PATTERNS, "max_pending": 100_000}
    settings.update(options)
    if "executor" not in settings:
        # max_workers sizes the default pool only; an executor brings its own.
        settings.setdefault("max_workers", 8)
    return AsyncMiddleware(inner or make_flask(), **settings)


def _with_sdk_spans(app: WSGIApplication) -> WSGIApplication:
    """``app``, making a task's three spans with the SDK directly in each task
    (asyncwsgi's own tracing is left out): the SDK's cost alone."""
    import asyncwsgi.tracing

    from .observability_cost import _sdk_spans

    asyncwsgi.tracing._active = lambda: None  # the hook the tests use too
    spans = _sdk_spans()

    def traced(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if "asyncwsgi.task" in environ:
            spans()
        return app(environ, start_response)

    return traced


def _observed(how: str) -> dict[str, Any]:
    """Metrics on, and with ``how == "traced"`` tracing too as in production:
    the OpenTelemetry SDK with a batch processor (its exporter drops the
    spans: no collector here); the options to give ``make_async`` (Any: as
    there)."""
    if how not in ("traced", "spans"):
        return {"metrics_path": "/metrics"}
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    trace.set_tracer_provider(provider)
    return {"metrics_path": "/metrics"}


def _select() -> WSGIApplication:
    kind = os.environ.get("BENCH_APP", "bare")
    if kind == "bare":
        return make_flask()
    if kind == "async":
        how = os.environ.get("BENCH_OBSERVE")
        options = _observed(how) if how else {}
        if how == "spans":
            options["inner"] = _with_sdk_spans(make_flask())
        store = os.environ.get("BENCH_STORE")
        if store:
            options["store"] = store
        if os.environ.get("BENCH_EXECUTOR") == "inline":
            from .stand_ins import Inline

            options["executor"] = Inline()  # each job run before its request is answered
        return make_async(**options)
    if kind == "naive":
        return make_naive()
    if kind == "least":  # scenarios 2 and 3: the least any pool could do
        from .stand_ins import least

        return least(make_flask(), TASK_PATH)
    if kind == "celery":  # scenario 11: the same app, its tasks on a Celery worker
        from . import celery_recipe

        executor = celery_executor_class()(celery_recipe.celery_app, celery_recipe.WSGI_APP)
        return make_async(store=os.environ["BENCH_STORE"], executor=executor)
    if kind == "recipe":  # scenario 11: the classic Celery recipe
        from . import celery_recipe

        return celery_recipe.make_recipe_app(celery_recipe.celery_app)
    raise ValueError(f"unknown BENCH_APP {kind!r}")


app = _select() if os.environ.get("BENCH_APP") else None
