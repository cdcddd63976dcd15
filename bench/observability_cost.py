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
- ``sampled``: the SDK sampling 10 % of traces (parent-based);
- ``spans``: no middleware, only what the SDK itself costs for one task's
  three spans (as ``traced`` sets it up: same processor, same parents, kinds,
  attributes and explicit queue times), so that ``traced - metrics - spans``
  is roughly the work asyncwsgi adds around the SDK's spans (roughly: spans
  made between a middleware's allocations cost more than in a loop alone);
- ``own``: that work measured in one traced process instead: batches of
  tasks traced, alternating with batches of the same tasks untraced each
  followed by the SDK's three bare spans; the difference per task.

On a shared machine these CPU times vary by more than the differences
sought. ``python -m bench.observability_cost --instructions`` counts
instructions instead (valgrind's cachegrind, ``apt-get install valgrind``):
per task, those of ``tasks`` tasks less those of none, each mode in its own
process. Counts barely move from run to run, and subtract: ``traced -
metrics - spans`` is asyncwsgi's own tracing work.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan


ROOT = Path(__file__).resolve().parent.parent
MODES = ("off", "metrics", "traced", "sampled", "spans", "own")


def _setup(mode: str) -> None:
    if mode == "off":
        # None makes an import fail (documented); typeshed allows modules only.
        sys.modules["prometheus_client"] = None  # type: ignore[assignment]
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    if mode in ("traced", "sampled", "spans", "own"):
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        class Dropped(SpanExporter):
            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        sampler = ParentBased(TraceIdRatioBased(0.1)) if mode == "sampled" else None
        provider = TracerProvider(sampler=sampler)
        # A queue as large as a batch run: the figure is the cost, not drops.
        provider.add_span_processor(BatchSpanProcessor(Dropped(), max_queue_size=100_000))
        trace.set_tracer_provider(provider)


def _sdk_spans() -> Callable[[], None]:
    """One task's three spans, made with the SDK directly: what tracing a task
    costs before any work of asyncwsgi's."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    from asyncwsgi.tracing import TASK_ID

    tracer = trace.get_tracer("asyncwsgi")
    attributes = {TASK_ID: "x" * 22}

    def once() -> None:
        submit = tracer.start_span("asyncwsgi submit", kind=SpanKind.PRODUCER)
        parent = trace.set_span_in_context(submit)
        now = time.time_ns()
        queue = tracer.start_span(
            "asyncwsgi queue", context=parent, attributes=attributes, start_time=now
        )
        queue.end(end_time=now)
        run = tracer.start_span(
            "asyncwsgi run", context=parent, kind=SpanKind.CONSUMER, attributes=attributes,
            start_time=now,
        )  # fmt: skip
        run.set_attribute("http.response.status_code", 200)
        run.end()
        submit.set_attribute(TASK_ID, attributes[TASK_ID])
        submit.end()

    return once


def measure(mode: str, tasks: int = 2000, batches: int = 7) -> float:
    """CPU microseconds per task, in this process (call in a fresh one)."""
    _setup(mode)
    if mode == "spans":
        return _best(_sdk_spans(), tasks, batches)
    once = _task(metrics=mode != "off")
    if mode == "own":
        return _own(once, tasks, batches + 2)
    return _best(once, tasks, batches)


def _own(traced: Callable[[], None], tasks: int, pairs: int) -> float:
    """Per task, CPU of ``traced`` minus that of the same task untraced plus
    the SDK's three spans, each the least over ``pairs`` small batches, side
    by side (small: a batch the machine's other work got into is not the
    least; the figures vary by far more than the difference sought)."""
    import asyncwsgi.tracing

    spans = _sdk_spans()
    active = asyncwsgi.tracing._active

    def untraced_then_spans() -> None:
        asyncwsgi.tracing._active = lambda: None  # the hook the tests use too
        try:
            traced()
        finally:
            asyncwsgi.tracing._active = active
        spans()

    size = max(tasks // 10, 1)

    def batch(once: Callable[[], None]) -> float:
        started = time.process_time()
        for _ in range(size):
            once()
        return (time.process_time() - started) / size * 1e6

    batch(traced), batch(untraced_then_spans)  # warm up
    a: list[float] = []
    b: list[float] = []
    for i in range(pairs * 5):
        for once, figures in ((traced, a), (untraced_then_spans, b))[:: 1 if i % 2 else -1]:
            figures.append(batch(once))
    return min(a) - min(b)


def _task(metrics: bool) -> Callable[[], None]:
    """A call of the middleware that submits a task and runs it inline."""
    from asyncwsgi import AsyncMiddleware

    from .stand_ins import Inline, noop_start_response, trivial_app

    middleware = AsyncMiddleware(
        trivial_app, paths=["/task"], executor=Inline(), max_pending=10**9, result_ttl=0,
        metrics_path="/metrics" if metrics else None,
    )  # fmt: skip
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/task", "SCRIPT_NAME": "",
               "SERVER_NAME": "bench", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}  # fmt: skip

    def once() -> None:
        list(middleware(dict(environ), noop_start_response))

    return once


def _best(once: Callable[[], None], tasks: int, batches: int) -> float:
    """The least CPU microseconds per call of ``once`` over ``batches``."""
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


INSTRUCTION_MODES = ("off", "metrics", "traced", "sampled", "spans")


def _calls(mode: str, count: int) -> None:
    """``count`` tasks of ``mode`` after a warm-up, for a count of instructions."""
    _setup(mode)
    once = _sdk_spans() if mode == "spans" else _task(metrics=mode != "off")
    for _ in range(100 + count):
        once()


def _instructions(mode: str, count: int, env: dict[str, str]) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, "-m", "bench.observability_cost", "--calls", mode, str(count)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    match = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind: {out.stderr[-500:]}")
    return int(match.group(1).replace(",", ""))


def instructions(tasks: int = 1000) -> dict[str, float]:
    """Thousands of instructions per task in each mode, and ``own``: traced
    less metrics and the SDK's spans."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    counts = {
        mode: (_instructions(mode, tasks, env) - _instructions(mode, 0, env)) / tasks / 1000
        for mode in INSTRUCTION_MODES
    }
    counts["own"] = counts["traced"] - counts["metrics"] - counts["spans"]
    return counts


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--mode":
        print(measure(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "--calls":
        _calls(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:] == ["--instructions"]:
        print(json.dumps(instructions(), indent=2))
    else:
        print(json.dumps(compare(), indent=2))
