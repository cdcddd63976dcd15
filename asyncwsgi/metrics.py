"""Prometheus metrics of the tasks (``pip install 'asyncwsgi-middleware[metrics]'``).

A process counts the tasks it accepts or runs (a web worker, a Celery worker)
once counting is switched on there (:func:`enable`: by ``metrics_path``, by
reading the registry, by ``PROMETHEUS_MULTIPROC_DIR``, or by hand), in its
metric objects (:data:`INSTRUMENTS`, registered in prometheus_client's
default registry); until then, and always without prometheus_client, nothing
is counted. Labels are bounded:
the rejection reason, the status class and the configured path pattern that
made the request a task (``pattern="/reports/*"``), never a path or a task
id. The pattern labels what is counted where the request is at hand: tasks
accepted and rejected, their queue wait and run time, on whichever process
runs them (it travels with the task). Tasks finished, lost, timed out,
cancelled or expired are counted where only the task's record is known (the
store's lease sweep, the timeout watchdog, a ``DELETE``), so without it.

The queued and running gauges are read from the store when scraped
(:class:`StoreCollector`), so every process of a deployment reports the same
totals. Under ``gunicorn -w N``, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory before the server starts: each process then writes its counts there
and a scrape, whichever worker answers it, sums them
(:func:`scrape_registry`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.multiprocess import MultiProcessCollector
except ImportError:  # the optional extra is not installed: count nothing
    prometheus_client = None  # type: ignore[assignment]

from .stores.base import Store, StoreUnavailable

if TYPE_CHECKING:
    from .task import Result, TaskRecord

__all__ = [
    "AVAILABLE",
    "INSTRUMENTS",
    "enable",
    "REJECT_REASONS",
    "ByPattern",
    "Instruments",
    "StoreCollector",
    "scrape_registry",
]

#: Whether prometheus_client can be imported (metrics may be switched on).
AVAILABLE = prometheus_client is not None

#: Why a task was refused, the label values of ``asyncwsgi_tasks_rejected_total``.
REJECT_REASONS = ("full", "closed", "too_large", "store_unavailable", "executor_unavailable")
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# From a fast task's milliseconds to a report that takes an hour.
_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_BYTE_BUCKETS = tuple(float(4**n) for n in range(4, 14))  # 256 B to 64 MiB


def status_class(status: str) -> str:
    """``"404 Not Found"`` -> ``"4xx"``: a label with five values at most."""
    head = status[:1]
    return f"{head}xx" if head and head in "12345" else "5xx"


class ByPattern(NamedTuple):
    """The metrics of one pattern's tasks (children of :class:`Instruments`'
    labelled metrics)."""

    accepted: Counter
    queue_wait: Histogram
    run_time: Histogram


class Instruments:
    """The metric objects of one process: counters, histograms and the gauge
    of requests waiting for a task (``Prefer: wait``)."""

    def __init__(self, registry: Any = None) -> None:
        if prometheus_client is None:
            raise RuntimeError(
                "metrics need prometheus_client: pip install 'asyncwsgi-middleware[metrics]'"
            )
        if registry is None:
            registry = prometheus_client.REGISTRY
        self.accepted = Counter(
            "asyncwsgi_tasks_accepted", "Tasks accepted (written to the store and queued)",
            ["pattern"], registry=registry,
        )  # fmt: skip
        self.rejected = Counter(
            "asyncwsgi_tasks_rejected", "Task submissions refused, by reason",
            ["reason", "pattern"], registry=registry,
        )  # fmt: skip
        self.finished = Counter(
            "asyncwsgi_tasks_finished",
            "Tasks that ended with a response (timeouts and failures included), by status class",
            ["status_class"],
            registry=registry,
        )
        self.lost = Counter(
            "asyncwsgi_tasks_lost",
            "Tasks ended as lost: the process holding them stopped renewing their lease",
            registry=registry,
        )
        self.timed_out = Counter(
            "asyncwsgi_tasks_timed_out",
            "Tasks ended as 504 by the timeout (also counted in finished, 5xx)",
            registry=registry,
        )
        self.cancelled = Counter(
            "asyncwsgi_tasks_cancelled", "Queued or running tasks deleted by their client",
            registry=registry,
        )  # fmt: skip
        self.expired = Counter(
            "asyncwsgi_expired_polls",
            "Polls of a task whose result had expired (410): clients fetching too late",
            registry=registry,
        )
        self.queue_wait = Histogram(
            "asyncwsgi_task_queue_wait_seconds", "Time from acceptance to the start of the run",
            ["pattern"], buckets=_TIME_BUCKETS, registry=registry,
        )  # fmt: skip
        self.run_time = Histogram(
            "asyncwsgi_task_run_seconds", "Time the app took to answer a task",
            ["pattern"], buckets=_TIME_BUCKETS, registry=registry,
        )  # fmt: skip
        self.result_bytes = Histogram(
            "asyncwsgi_task_result_bytes", "Size of the stored response bodies",
            buckets=_BYTE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.waiting = Gauge(
            "asyncwsgi_waiting_requests",
            "Requests blocked in Prefer: wait for a task to finish",
            multiprocess_mode="livesum",
            registry=registry,
        )
        # The children by label value, looked up once: labels() takes a lock.
        self._finished_by_class = {name: self.finished.labels(name) for name in _STATUS_CLASSES}
        self._by_pattern: dict[str, ByPattern] = {}

    def collectors(self) -> list[Any]:
        """Every metric object, to register in a registry."""
        return [value for value in vars(self).values() if hasattr(value, "collect")]

    def declare(self, patterns: Iterable[str]) -> None:
        """Every series of these patterns from the start, at 0: a series that
        appears only on the first event makes rate() and alerts miss it."""
        for pattern in patterns:
            self.of(pattern)
            for reason in REJECT_REASONS:
                self.rejected.labels(reason, pattern)

    def of(self, pattern: object) -> ByPattern:
        """The metrics of the tasks of ``pattern`` (a label value; anything
        else, such as the absent pattern of a message from an older version,
        is counted under the empty label)."""
        label = pattern if isinstance(pattern, str) else ""
        found = self._by_pattern.get(label)
        if found is None:
            # A race makes the same children twice: labels() returns one child.
            found = self._by_pattern[label] = ByPattern(
                self.accepted.labels(label),
                self.queue_wait.labels(label),
                self.run_time.labels(label),
            )
        return found

    def reject(self, reason: str, pattern: str) -> None:
        self.rejected.labels(reason, pattern).inc()

    def finish(self, result: Result) -> None:
        """A task ended with ``result`` (its store write succeeded)."""
        self._finished_by_class[status_class(result.status)].inc()
        self.result_bytes.observe(result.size)


#: This process's metrics, or None while it counts nothing: counting is a
#: feature, switched on where someone reads the counts (:func:`enable`), so
#: that a process that only has prometheus_client installed (another package
#: may have brought it) pays nothing for it on any task.
INSTRUMENTS: Instruments | None = None
_switching = threading.Lock()


def enable() -> Instruments:
    """Count asyncwsgi's tasks in this process from now on, in
    prometheus_client's default registry (a no-op once on). A middleware with
    ``metrics_path`` calls it, and so do :attr:`AsyncMiddleware.metrics_registry
    <asyncwsgi.AsyncMiddleware.metrics_registry>` and :func:`scrape_registry`;
    with ``PROMETHEUS_MULTIPROC_DIR`` set, every process counts from import.
    Call it yourself where the counts leave the process another way: an
    exporter of your own on the default registry, or a Celery, RQ or Django
    Tasks worker that serves its own metrics outside multiprocess mode."""
    global INSTRUMENTS
    with _switching:
        if INSTRUMENTS is None:
            if prometheus_client is None:
                raise RuntimeError(
                    "metrics need prometheus_client: pip install 'asyncwsgi-middleware[metrics]'"
                )
            INSTRUMENTS = Instruments()
            # The store that ends a lapsed task tells its hooks: counted here, once.
            Store.lost_hooks.append(_count_lost)
        return INSTRUMENTS


def _count_lost(record: TaskRecord) -> None:
    if INSTRUMENTS is not None:
        INSTRUMENTS.lost.inc()


if prometheus_client is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Multiprocess mode is set up for metrics alone: the process's counts are
    # read from its files by whichever process answers a scrape.
    enable()


class StoreCollector:
    """Gauges read from the store at each scrape: ``asyncwsgi_tasks_queued``,
    ``asyncwsgi_tasks_running`` (the whole table, the same whichever process
    is asked) and ``asyncwsgi_store_up`` (0 when the store did not answer).

    Register it in your own registry to expose them with your other metrics:
    ``REGISTRY.register(StoreCollector(application.store))``.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        return []  # no store call when registered

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("asyncwsgi_store_up", "1 if the task store answered this scrape")
        try:
            counts = self.store.count_states()
        except StoreUnavailable:  # anything else is a bug, raised to the scrape
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for state in ("queued", "running"):
            yield GaugeMetricFamily(
                f"asyncwsgi_tasks_{state}",
                f"Tasks {state} in the store, counted across every process",
                value=counts.get(state, 0),
            )


def scrape_registry(store: Store | None = None) -> CollectorRegistry:
    """A registry to answer a scrape with: asyncwsgi's metrics (summed over
    every process in multiprocess mode, as any collector of that directory
    does) and, given a store, its gauges. Switches counting on in this
    process (:func:`enable`): what is asked for is then counted."""
    instruments = enable()
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for metric in instruments.collectors():
            registry.register(metric)
    if store is not None:
        registry.register(StoreCollector(store))
    return registry
