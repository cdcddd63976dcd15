"""OpenTelemetry spans of a task's life (``pip install 'asyncwsgi-middleware[tracing]'``).

Only the OpenTelemetry API is used, as libraries do: the application sets
up the SDK and its exporter. Until a tracer provider is set (and without the
API installed) nothing here does anything, and a request's own trace headers
reach the app untouched.

Three spans per task, in the trace of the request that submitted it (the
current span, such as OpenTelemetry's WSGI middleware's server span around
asyncwsgi, or else the request's ``traceparent`` header):

- ``asyncwsgi submit``: accepting the task, until the 202 (or the response of
  a ``Prefer: wait`` that got it);
- ``asyncwsgi queue``: from acceptance to the start of the run, child of the
  submit span;
- ``asyncwsgi run``: the app's call, child of the submit span.

When the submit span is not sampled, neither is the rest (as OpenTelemetry's
default, parent-based sampling has it): the queue and run spans are not made
and the app continues from the submit span's context.

The submit span's W3C ``traceparent``/``tracestate`` travel with the task in
its environ (``HTTP_TRACEPARENT``, ``HTTP_TRACESTATE``), to a thread or a
Celery worker alike; the app is called with those of the run span, so an app
wrapped in OpenTelemetry's WSGI middleware continues the same trace. On the
thread pool the submit span's context also travels as it is (the job's
``trace_parent``, which the JSON of a remote engine's message leaves
behind), so that the run need not parse the header it was just given. The only attributes are the
task id (``asyncwsgi.task_id``) and the response's status code: no header,
body or owner value.

What the spans cost is mostly the SDK's (some 15-25 µs a span, measured by
``python -m bench.observability_cost``); the work here around them is kept
to one carrier written per hand-off and one context attached per submission.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import (
        NonRecordingSpan,
        ProxyTracerProvider,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the optional API is not installed: no spans
    trace = None  # type: ignore[assignment]

#: Whether the OpenTelemetry API is installed. Without it nothing here can
#: ever record a span, so callers skip even the calls that would find out.
INSTALLED = trace is not None

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "INSTALLED",
    "TASK_ID",
    "activate",
    "carry",
    "end_run",
    "inject",
    "start_run",
    "start_submit",
]

#: The span attribute that names the task.
TASK_ID = "asyncwsgi.task_id"
_CARRIER_KEYS = ("HTTP_TRACEPARENT", "HTTP_TRACESTATE")

# The SDK's tracer once a provider is set: the API's proxy tracer would look
# it up again on every span.
_tracer: Tracer | None = None


if trace is not None:

    class _EnvironGetter(Getter[dict[str, Any]]):
        """Reads propagation headers from a WSGI environ (``traceparent`` is
        ``HTTP_TRACEPARENT``)."""

        def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
            value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
            return [value] if isinstance(value, str) else None

        def keys(self, carrier: dict[str, Any]) -> list[str]:
            return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]

    _GETTER = _EnvironGetter()
    # The W3C format itself, not the global (composite) propagator: it is
    # what the task's environ carries, whatever else the app propagates.
    _W3C = TraceContextTextMapPropagator()


def _active() -> Tracer | None:
    """The tracer, or None while no tracer provider is set (the API's own
    records nothing: then tracing costs nothing)."""
    global _tracer
    tracer = _tracer
    if tracer is None and trace is not None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, ProxyTracerProvider):
            return None
        # A process's provider is set once (the API refuses to replace it).
        tracer = _tracer = provider.get_tracer("asyncwsgi")
    return tracer


def start_submit(environ: dict[str, Any]) -> Span | None:
    """The submit span, not yet current; None when not tracing."""
    tracer = _active()
    if tracer is None:
        return None
    context = None
    if not trace.get_current_span().get_span_context().is_valid and any(
        key in environ for key in _header_keys()
    ):
        # No instrumentation around us: continue the caller's trace. (Without
        # any of the propagators' headers there is none: a root span.)
        context = propagate.extract(environ, getter=_GETTER)
    return tracer.start_span("asyncwsgi submit", context=context, kind=SpanKind.PRODUCER)


_propagation: tuple[Any, tuple[str, ...]] = (None, ())


def _header_keys() -> tuple[str, ...]:
    """The environ keys of the headers the global propagators read, such as
    ``HTTP_TRACEPARENT``: worked out again only when the propagators change."""
    global _propagation
    textmap = propagate.get_global_textmap()
    known, keys = _propagation
    if textmap is not known:
        keys = tuple(sorted({"HTTP_" + f.upper().replace("-", "_") for f in textmap.fields}))
        _propagation = (textmap, keys)
    return keys


class activate:
    """Make ``span`` current for a with-block, ending it on exit; an
    exception marks it as an error (as the API's ``use_span`` does, without
    its generator-based context manager: a third of the cost)."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        otel_context.detach(self.token)
        if isinstance(exc, Exception) and self.span.is_recording():
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.span.end()


def carry(environ: dict[str, Any], span: Span, task_id: str) -> SpanContext:
    """Name the task on its submit ``span`` and make the job's ``environ``
    carry the span's context as W3C headers (for any executor); the context
    itself is returned, for the job's ``trace_parent`` (in this process)."""
    span.set_attribute(TASK_ID, task_id)
    inject(environ, span)
    return span.get_span_context()


def inject(environ: dict[str, Any], span: Span) -> None:
    """Make ``environ`` carry ``span``'s context (W3C ``traceparent`` and
    ``tracestate``), in place of the one the request came with."""
    context = span.get_span_context()
    if not context.is_valid:
        for key in _CARRIER_KEYS:
            environ.pop(key, None)
        return
    # One %-format: a third cheaper than an f-string's three format specs.
    environ["HTTP_TRACEPARENT"] = "00-%032x-%016x-%02x" % (  # noqa: UP031
        context.trace_id, context.span_id, context.trace_flags,
    )  # fmt: skip
    state = context.trace_state
    if state:
        environ["HTTP_TRACESTATE"] = state.to_header()
    else:
        environ.pop("HTTP_TRACESTATE", None)


def start_run(
    environ: dict[str, Any],
    task_id: str,
    accepted: float | None,
    started: float,
    submitted: object | None = None,
) -> Span | None:
    """Record the queue span (now that its end is known) and start the run
    span, both children of the submit span: ``submitted``, its context, in
    this process, else the one carried in ``environ``; None when not tracing,
    or when the submit span was not sampled."""
    tracer = _active()
    if tracer is None:
        return None
    parent: Context | None = None
    if not isinstance(submitted, SpanContext):  # from another process: the W3C headers
        parent = _W3C.extract(environ, getter=_GETTER)
        submitted = trace.get_current_span(parent).get_span_context()
    if submitted.is_valid and not submitted.trace_flags.sampled:
        return None
    if parent is None:
        parent = trace.set_span_in_context(NonRecordingSpan(submitted))
    attributes = {TASK_ID: task_id}
    start_ns = int(started * 1e9)
    if accepted is not None:
        queued = tracer.start_span(
            "asyncwsgi queue", context=parent, attributes=attributes,
            start_time=int(accepted * 1e9),
        )  # fmt: skip
        queued.end(end_time=start_ns)
    return tracer.start_span(
        "asyncwsgi run", context=parent, kind=SpanKind.CONSUMER, attributes=attributes,
        start_time=start_ns,
    )  # fmt: skip


def end_run(span: Span, status: str | None) -> None:
    """End the run span with the task's response status (None: no result)."""
    if span.is_recording():
        if status is None or status[:1] == "5":
            span.set_status(Status(StatusCode.ERROR))
        if status is not None and status[:3].isdigit():
            span.set_attribute("http.response.status_code", int(status[:3]))
    span.end()
