"""``metrics_path``: the Prometheus metrics, answered by the middleware."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..metrics import scrape_registry
from .responses import method_not_allowed

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from prometheus_client import CollectorRegistry

    from ..stores import Store

__all__ = ["Scrape"]


class Scrape:
    """``scrape(environ, start_response)``: a GET or HEAD of the metrics URL."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """asyncwsgi's metrics (every process's, summed, in prometheus_client's
        multiprocess mode) and the queued/running gauges read from the store;
        made on first use (it needs prometheus_client)."""
        if self._registry is None:
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
