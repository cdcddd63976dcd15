"""OpenTelemetry: a task's submit, queue and run spans are in the trace of the
request that submitted it, on the thread pool and on a real Celery worker,
and an app wrapped in OpenTelemetry's WSGI middleware continues that trace."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from werkzeug.test import Client

from asyncwsgi.tracing import TASK_ID
from bench.services import stop_group
from tests.helpers import emptied_dbs, wait_done

ROOT = Path(__file__).resolve().parent.parent
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
TRACEPARENT = f"00-{TRACE_ID:032x}-00f067aa0ba902b7-01"

PROVIDER = TracerProvider()
EXPORTER = InMemorySpanExporter()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


def traced(app: Any) -> OpenTelemetryMiddleware:
    """OpenTelemetry's WSGI middleware, recording into this module's provider."""
    return OpenTelemetryMiddleware(app, tracer_provider=PROVIDER)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """The SDK's in-memory exporter, recording asyncwsgi's spans during the
    test only: the process-wide tracer provider is left alone, so other tests
    run untraced whatever their order."""
    import asyncwsgi.tracing

    tracer = PROVIDER.get_tracer("asyncwsgi")
    monkeypatch.setattr(asyncwsgi.tracing, "_active", lambda: tracer)
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()
    # OpenTelemetry's WSGI middleware keeps its span current from the first
    # chunk of a response until that response is closed: responses closed out
    # of order leave a span current on this thread, and every later test here
    # would then trace into it instead of into its own request.
    assert not span_current(), "a span was left current"


def span_current() -> bool:
    """Whether a span is current on this thread."""
    return trace.get_current_span().get_span_context().is_valid


def inner(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def finished(exporter: InMemorySpanExporter, names: set[str]) -> dict[str, ReadableSpan]:
    """The spans named ``names``, once all have ended (a run span ends just
    after its result is stored, so a poll may see the result first)."""
    deadline = time.monotonic() + 10
    while True:
        found = {span.name: span for span in exporter.get_finished_spans()}
        if names <= set(found):
            return found
        assert time.monotonic() < deadline, (names, list(found))
        time.sleep(0.01)


TASK_SPANS = {"asyncwsgi submit", "asyncwsgi queue", "asyncwsgi run"}


def test_spans_of_a_task_on_the_thread_pool(wrap: Any, spans: InMemorySpanExporter) -> None:
    middleware = wrap(traced(inner))
    client = Client(traced(middleware))
    response = client.post("/work/report")
    assert response.status_code == 202
    task_id = response.json["id"]
    assert wait_done(client, response.headers["Location"]).status_code == 200

    found = finished(spans, TASK_SPANS | {"POST /work/report"})
    servers = [s for s in spans.get_finished_spans() if s.name == "POST /work/report"]
    assert len(servers) == 2  # the submitting request's, and the app's inside the task
    request = next(s for s in servers if s.parent is None)
    app_span = next(s for s in servers if s.parent is not None)
    submit, queue, run = (
        found[name] for name in ("asyncwsgi submit", "asyncwsgi queue", "asyncwsgi run")
    )
    trace_id = request.context.trace_id
    for span in (submit, queue, run, app_span):
        assert span.context.trace_id == trace_id
    assert submit.parent.span_id == request.context.span_id
    assert queue.parent.span_id == submit.context.span_id
    assert run.parent.span_id == submit.context.span_id
    assert app_span.parent.span_id == run.context.span_id
    for span in (submit, queue, run):
        assert span.attributes[TASK_ID] == task_id
    assert queue.end_time <= run.start_time + 1
    assert run.attributes["http.response.status_code"] == 200


def test_a_traceparent_header_is_continued_without_instrumentation_around(
    wrap: Any, spans: InMemorySpanExporter
) -> None:
    client = Client(wrap(traced(inner)))
    response = client.post("/work/x", headers={"traceparent": TRACEPARENT})
    assert wait_done(client, response.headers["Location"]).status_code == 200
    found = finished(spans, TASK_SPANS | {"POST /work/x"})
    for span in found.values():
        assert span.context.trace_id == TRACE_ID
    assert found["asyncwsgi submit"].parent.span_id == 0x00F067AA0BA902B7


def test_the_request_is_read_with_the_apps_own_propagators(
    wrap: Any, spans: InMemorySpanExporter
) -> None:
    """asyncwsgi looks for the headers the global propagators name, whichever
    they are (it skips the extraction when none is there)."""
    from opentelemetry import propagate
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    class Vendor(TextMapPropagator):
        """A made-up format: ``X-Vendor-Trace: <trace id>-<span id>``."""

        def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
            found = getter.get(carrier, "x-vendor-trace") if getter is not None else None
            if not found:
                return context
            trace_id, span_id = (int(part, 16) for part in found[0].split("-"))
            parent = SpanContext(trace_id, span_id, True, TraceFlags(TraceFlags.SAMPLED))
            return trace.set_span_in_context(NonRecordingSpan(parent), context)

        def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
            return None

        @property
        def fields(self) -> set[str]:
            return {"x-vendor-trace"}

    saved = propagate.get_global_textmap()
    propagate.set_global_textmap(Vendor())
    try:
        client = Client(wrap(inner))
        header = {"X-Vendor-Trace": f"{TRACE_ID:032x}-00f067aa0ba902b7"}
        response = client.post("/work/x", headers=header)
        assert wait_done(client, response.headers["Location"]).status_code == 200
    finally:
        propagate.set_global_textmap(saved)
    submit = finished(spans, TASK_SPANS)["asyncwsgi submit"]
    assert submit.context.trace_id == TRACE_ID
    assert submit.parent.span_id == 0x00F067AA0BA902B7


def test_polling_through_opentelemetry_leaves_no_span_current(
    wrap: Any, spans: InMemorySpanExporter
) -> None:
    """The suite's poller closes each 202 before it polls again. (A CI run
    once failed two tests here: the one before them had read its 202's body,
    then polled twice, and the first poll's span stayed current.)"""
    first_poll_answered = threading.Event()

    def gated(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        first_poll_answered.wait(10)
        return inner(environ, start_response)

    middleware = wrap(gated)

    def outer(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            return middleware(environ, start_response)
        finally:
            if environ["REQUEST_METHOD"] == "GET":
                first_poll_answered.set()

    client = Client(traced(outer))
    location = client.post("/work/x").headers["Location"]
    assert not span_current()
    assert wait_done(client, location).status_code == 200
    assert not span_current()


def test_a_failing_task_marks_its_run_span(wrap: Any, spans: InMemorySpanExporter) -> None:
    def failing(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise RuntimeError("boom")

    client = Client(wrap(failing))
    response = client.post("/work/x")
    assert wait_done(client, response.headers["Location"]).status_code == 500
    run = finished(spans, TASK_SPANS)["asyncwsgi run"]
    assert run.status.status_code is trace.StatusCode.ERROR


def seen_by_app() -> tuple[list[dict[str, Any]], Any]:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append({k: v for k, v in environ.items() if k.startswith("HTTP_TRACE")})
        return inner(environ, start_response)

    return seen, app


def test_nothing_is_done_until_a_tracer_provider_is_set(wrap: Any) -> None:
    seen, app = seen_by_app()
    client = Client(wrap(app))
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
    response = client.post("/work/x", headers=headers)
    assert wait_done(client, response.headers["Location"]).status_code == 200
    assert seen == [{"HTTP_TRACEPARENT": TRACEPARENT, "HTTP_TRACESTATE": "vendor=1"}]


def test_an_unsampled_submit_makes_no_more_spans(
    wrap: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    import asyncwsgi.tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("asyncwsgi")
    monkeypatch.setattr(asyncwsgi.tracing, "_active", lambda: tracer)
    seen, app = seen_by_app()
    client = Client(wrap(app))
    response = client.post("/work/x")
    assert wait_done(client, response.headers["Location"]).status_code == 200
    assert exporter.get_finished_spans() == ()
    (carried,) = seen
    assert int(carried["HTTP_TRACEPARENT"][-2:], 16) & 1 == 0  # the submit's: not sampled


def test_what_travels_with_the_job_for_asyncwsgi_never_reaches_the_app(
    wrap: Any, spans: InMemorySpanExporter
) -> None:
    seen: list[set[str]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append({key for key in environ if key.startswith("asyncwsgi.")})
        return inner(environ, start_response)

    client = Client(wrap(app))
    response = client.post("/work/x")
    assert wait_done(client, response.headers["Location"]).status_code == 200
    finished(spans, TASK_SPANS)  # traced: the submit span's context went with the job
    assert seen == [{"asyncwsgi.task"}]


def test_no_work_for_unmarked_requests(wrap: Any, spans: InMemorySpanExporter) -> None:
    client = Client(wrap(inner))
    assert client.get("/elsewhere").status_code == 200
    assert spans.get_finished_spans() == ()


# -- a real Celery worker ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_spans_and_metrics_of_a_task_on_a_celery_worker(
    redis_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:

    broker, store = emptied_dbs(redis_url, 10, 11)
    span_file = tmp_path / "worker-spans.jsonl"
    metrics_dir = tmp_path / "worker-metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "ASYNCWSGI_TEST_BROKER": broker,
        "ASYNCWSGI_TEST_STORE": store,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    saved = {key: os.environ.get(key) for key in ("ASYNCWSGI_TEST_BROKER", "ASYNCWSGI_TEST_STORE")}
    os.environ.update(ASYNCWSGI_TEST_BROKER=broker, ASYNCWSGI_TEST_STORE=store)
    try:
        # Made afresh with this test's URLs, and once only: each run of the
        # module makes a middleware (with its lease sweeper) to be closed.
        sys.modules.pop("tests.apps.traced_celery", None)
        web_module = importlib.import_module("tests.apps.traced_celery")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.apps.traced_celery:celery_app",
            "worker",
            "--concurrency",
            "1",
            "--loglevel",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],  # fmt: skip
        cwd=ROOT,
        env={
            **env,
            "ASYNCWSGI_TEST_SPANS": str(span_file),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        },
        start_new_session=True,
    )
    middleware = web_module.application
    try:
        client = Client(traced(middleware))
        response = client.post("/task/report")
        assert response.status_code == 202
        task_id = response.json["id"]
        assert wait_done(client, response.headers["Location"], timeout=60).status_code == 200
        web_found = finished(spans, {"asyncwsgi submit", "POST /task/report"})
        deadline = time.monotonic() + 20
        worker_spans: dict[str, dict[str, Any]] = {}
        while not {"asyncwsgi queue", "asyncwsgi run", "POST /task/report"} <= set(worker_spans):
            assert time.monotonic() < deadline, list(worker_spans)
            time.sleep(0.05)
            if span_file.exists():
                lines = span_file.read_text().splitlines()
                worker_spans = {s["name"]: s for s in map(json.loads, lines)}
    finally:
        stop_group(worker)
        middleware.close()
        middleware.store.close()
    # Every middleware the test made is closed: no lease sweeper is left to
    # retry this Redis once the suite has stopped it.
    assert [t for t in threading.enumerate() if t.name == "asyncwsgi-sweeper"] == []

    request = web_found["POST /task/report"]
    submit = web_found["asyncwsgi submit"]
    trace_id = request.context.trace_id
    assert submit.context.trace_id == trace_id
    assert submit.parent.span_id == request.context.span_id
    queue, run, app_span = (
        worker_spans[name] for name in ("asyncwsgi queue", "asyncwsgi run", "POST /task/report")
    )
    for span in (queue, run, app_span):
        assert int(span["context"]["trace_id"], 16) == trace_id
    assert int(queue["parent_id"], 16) == submit.context.span_id
    assert int(run["parent_id"], 16) == submit.context.span_id
    assert app_span["parent_id"] == run["context"]["span_id"]

    # The worker counted the task it ran, in prometheus_client's multiprocess
    # files (what a scrape of that directory, or of a web process sharing it,
    # reports).
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    assert registry.get_sample_value("asyncwsgi_tasks_finished_total", {"status_class": "2xx"}) == 1
    # Labelled with the web side's pattern, which travelled with the task.
    pattern = {"pattern": "/task/*"}
    assert registry.get_sample_value("asyncwsgi_task_run_seconds_count", pattern) == 1
    assert registry.get_sample_value("asyncwsgi_task_queue_wait_seconds_count", pattern) == 1
    assert queue["attributes"][TASK_ID] == run["attributes"][TASK_ID] == task_id
