"""A traced app whose tasks run on a Celery worker, for tests/test_tracing.py.

Broker and store URLs come from ``ASYNCWSGI_TEST_BROKER`` and
``ASYNCWSGI_TEST_STORE``. In the worker (``ASYNCWSGI_TEST_SPANS`` set), the
OpenTelemetry SDK records spans with its in-memory exporter, and after each
task they are appended to that file as JSON lines for the test to read. The
inner app is wrapped in OpenTelemetry's WSGI middleware, as a traced app is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.signals import task_postrun
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

from asyncwsgi import AsyncMiddleware
from asyncwsgi.executors.celery import CeleryExecutor

SPANS = os.environ.get("ASYNCWSGI_TEST_SPANS")

celery_app = Celery("traced_celery", broker=os.environ["ASYNCWSGI_TEST_BROKER"])
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

if SPANS:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    @task_postrun.connect
    def _write_spans(**_: Any) -> None:
        assert SPANS is not None
        with open(SPANS, "a") as out:
            for span in exporter.get_finished_spans():
                out.write(span.to_json(indent=None) + "\n")
        exporter.clear()


def inner(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


application = AsyncMiddleware(
    OpenTelemetryMiddleware(inner),
    paths=["/task/*"],
    store=os.environ["ASYNCWSGI_TEST_STORE"],
    executor=CeleryExecutor(celery_app, "tests.apps.traced_celery:application"),
)
