"""CPU time asyncwsgi spends per task with metrics and tracing off and on.

``python -m bench.observability_cost``: each configuration in its own
process (what is installed decides what asyncwsgi does), alternating; the
task is submitted and run inline (no pool hand-off, no HTTP), so the figure
is the middleware's own work per task, in CPU microseconds (the least of
several batches: the machine is shared).

- ``off``: as installed without the ``metrics`` and ``tracing`` extras;
- ``metrics``: prometheus_client, and the OpenTelemetry API with no tracer
  provider set (tracing installed, not set up);
- ``traced``: that, and the OpenTelemetry SDK recording every task's spans
  (batch processor, an exporter that drops them);
- ``sampled``: the SDK sampling 10 % of traces (parent-based).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("off", "metrics", "traced", "sampled")


def _setup(mode: str) -> None:
    if mode == "off":
        sys.modules["prometheus_client"] = None  # type: ignore[assignment]
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    if mode in ("traced", "sampled"):
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        class Dropped(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        sampler = ParentBased(TraceIdRatioBased(0.1)) if mode == "sampled" else None
        provider = TracerProvider(sampler=sampler)
        # A queue as large as a batch run: the figure is the cost, not drops.
        provider.add_span_processor(BatchSpanProcessor(Dropped(), max_queue_size=100_000))
        trace.set_tracer_provider(provider)


def measure(mode: str, tasks: int = 2000, batches: int = 7) -> float:
    """CPU microseconds per task, in this process (call in a fresh one)."""
    _setup(mode)
    from asyncwsgi import AsyncMiddleware
    from asyncwsgi.executor import Executor

    class Inline(Executor):
        def submit(self, job):
            self.runner.run(job)

        def shutdown(self, timeout=None):
            return True

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    kwargs = {"metrics_path": "/metrics"} if mode != "off" else {}
    middleware = AsyncMiddleware(
        app, paths=["/task"], executor=Inline(), max_pending=10**9, result_ttl=0, **kwargs
    )
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/task", "SCRIPT_NAME": "",
               "SERVER_NAME": "bench", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}  # fmt: skip

    def once() -> None:
        list(middleware(dict(environ), lambda status, headers, exc_info=None: None))

    for _ in range(tasks):
        once()
    best = float("inf")
    for _ in range(batches):
        started = time.process_time()
        for _ in range(tasks):
            once()
        best = min(best, (time.process_time() - started) / tasks * 1e6)
    return best


def compare(rounds: int = 3) -> dict[str, float]:
    """Median over ``rounds`` of each mode's figure, modes alternating."""
    figures: dict[str, list[float]] = {mode: [] for mode in MODES}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else reversed(MODES):
            out = subprocess.run(
                [sys.executable, "-m", "bench.observability_cost", "--mode", mode],
                cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=300,
            )  # fmt: skip
            figures[mode].append(float(out.stdout.strip().splitlines()[-1]))
    return {mode: statistics.median(values) for mode, values in figures.items()}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--mode":
        print(measure(sys.argv[2]))
    else:
        print(json.dumps(compare(), indent=2))
