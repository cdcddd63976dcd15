"""``metrics_path``: the Prometheus metrics, answered by the middleware."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import metrics
from ..metrics import scrape_registry
from .responses import method_not_allowed

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from prometheus_client import CollectorRegistry

    from ..stores import Store

__all__ = ["Scrape"]


class Scrape:
    """``scrape(environ, start_response)``: a GET or HEAD of the metrics URL."""

    def __init__(self, store: Store, labels: Iterable[str]) -> None:
        self.store = store
        self.labels = tuple(labels)  # the deployment's patterns, as labelled
        self._registry: CollectorRegistry | None = None

    def start(self) -> None:
        """Count this process's tasks from now on (:func:`~asyncwsgi.metrics.enable`),
        with every series of this deployment's patterns there at 0."""
        metrics.enable().declare(self.labels)

    @property
    def registry(self) -> CollectorRegistry:
        """asyncwsgi's metrics (every process's, summed, in prometheus_client's
        multiprocess mode) and the queued/running gauges read from the store;
        made on first use (it needs prometheus_client), which starts the
        counting: whoever asked for the registry reads the counts."""
        if self._registry is None:
            self.start()
            self._registry = scrape_registry(self.store)
        return self._registry

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            response = method_not_allowed("use GET or HEAD on the metrics URL", "GET, HEAD")
            return response(environ, start_response)
        body = generate_latest(self.registry)
        start_response(
            "200 OK",
            [
                ("Content-Type", CONTENT_TYPE_LATEST),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]
