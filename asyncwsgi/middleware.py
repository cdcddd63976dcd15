"""AsyncMiddleware: marked requests become background tasks with a status URL."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from . import metrics
from .executors import Executor, ThreadExecutor
from .http.answers import make_answers
from .http.responses import unavailable
from .http.submission import CALLBACK_HEADER
from .patterns import Pattern, compile_patterns
from .prefer import parse_prefer
from .results import error_result
from .runner import TaskRunner
from .settings import POOL_SIZE, Settings, check_budget
from .startup import announce_patterns, check_app, probe_store
from .stores import Store, open_store
from .stores.base import StoreFull, StoreUnavailable
from .stores.settings import STORE_SETTINGS

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from prometheus_client import CollectorRegistry

__all__ = ["CALLBACK_HEADER", "AsyncMiddleware"]

logger = logging.getLogger("asyncwsgi")

# How long a process exiting normally (a server's graceful stop) waits for its
# running tasks before it fails them, so that a shared store never keeps them
# "running" until their lease runs out.
_EXIT_GRACE = 10.0


class AsyncMiddleware:
    """Run the requests to marked paths in the background.

    A request whose path matches ``paths`` (and whose method is in
    ``methods``) is answered at once with ``202 Accepted`` and a ``Location``
    under ``status_path``; the app runs on a worker with a copy of the
    request, and the status URL answers 202 until the app's response is
    ready, then that response, exactly. Every other request goes straight to
    the app.

    >>> application = AsyncMiddleware(app, paths=["/reports/*"])
    >>> # POST /reports/q3      -> 202, Location: /status/<id>
    >>> # GET  /status/<id>     -> 202 while running, then the app's response

    ``close()`` stops accepting new tasks (503) and waits for the accepted
    ones; status URLs are answered while it waits.
    """

    # The options, as checked (asyncwsgi.settings.Settings); ``store``,
    # ``executor`` and ``max_stored_bytes`` are the ones in use.
    paths: list[Pattern]
    methods: frozenset[str]
    status_path: str
    store: Store
    max_workers: int | None
    max_pending: int
    result_ttl: float
    max_body: int
    max_result: int
    spool_threshold: int
    max_stored_bytes: int | None
    results_dir: str | None
    max_tombstones: int | None
    tombstone_ttl: float | None
    busy_timeout: float | None
    chunk_size: int | None
    spool_ttl: float | None
    local_copies: int | None
    min_replicas: int | None
    replica_timeout: float | None
    retry_after: int
    max_retry_after: int
    prefer_paths: list[Pattern]
    max_wait: float
    max_waiting: int | None
    owner: Callable[[WSGIEnvironment], str | None] | None
    lease: float
    timeout: float | None
    queue_timeout: float
    executor: Executor
    location_base: str | None
    metrics_path: str | None
    list_tasks: bool | None
    callback_allow: list[str] | None
    callback_secret: str | None

    def __init__(
        self,
        app: WSGIApplication,
        *,
        paths: Iterable[Pattern] = (),
        methods: Iterable[str] = ("GET", "POST", "PUT", "PATCH", "DELETE"),
        status_path: str = "/status/",
        store: Store | str | None = None,
        max_workers: int | None = None,
        max_pending: int = 1000,
        result_ttl: float = 300.0,
        max_body: int = 10 * 2**20,
        max_result: int = 2**30,
        spool_threshold: int = 2**20,
        max_stored_bytes: int | None = None,
        results_dir: str | None = None,
        max_tombstones: int | None = None,
        tombstone_ttl: float | None = None,
        busy_timeout: float | None = None,
        chunk_size: int | None = None,
        spool_ttl: float | None = None,
        local_copies: int | None = None,
        min_replicas: int | None = None,
        replica_timeout: float | None = None,
        retry_after: int = 1,
        max_retry_after: int = 30,
        prefer_paths: Iterable[Pattern] = (),
        max_wait: float = 10.0,
        max_waiting: int | None = None,
        owner: Callable[[WSGIEnvironment], str | None] | None = None,
        lease: float = 30.0,
        timeout: float | None = None,
        queue_timeout: float = 600.0,
        executor: Executor | None = None,
        location_base: str | None = None,
        metrics_path: str | None = None,
        list_tasks: bool | None = None,
        callback_allow: Iterable[str] | None = None,
        callback_secret: str | None = None,
    ) -> None:
        check_app(app)
        # Every option is checked by its rule in options.OPTIONS (one line
        # there for each keyword argument here: a test holds them together),
        # then the rules across options.
        settings = Settings.build(locals())
        self.settings = settings
        # Every option, an attribute of the same name (declared above);
        # store, executor and max_stored_bytes become the ones in use below.
        self.__dict__.update(settings.as_dict())
        self.app = app
        self.store = self._open_store(settings)
        self.runner = self._start_runner(settings)
        # Set by close(): new submissions get 503 (shared with the parts that ask).
        self._closing = threading.Event()
        self._make_answers(settings)
        if self.store.shared:
            _AT_EXIT.add(self)

    def _start_runner(self, settings: Settings) -> TaskRunner:
        """The task side: the runner, bound to the executor (the default
        thread pool unless one was given)."""
        given = settings.executor
        self.executor = (
            given if given is not None else ThreadExecutor(self.max_workers or POOL_SIZE)
        )
        runner = TaskRunner(
            self.app,
            self.store,
            max_result=settings.max_result,
            lease=settings.lease,
            timeout=settings.timeout,
            queue_timeout=settings.queue_timeout,
            spool_threshold=settings.spool_threshold,
        )
        self.executor.bind(runner)
        # Lapsed leases are judged by every process, unasked (a shared store).
        runner.sweep()
        return runner

    def _open_store(self, settings: Settings) -> Store:
        """The store, given or opened from its URL with the store's settings;
        a byte budget too small for ``max_result`` is refused here (the
        store's default budget counts)."""
        # A store opened here from a URL is this middleware's to close.
        self._owns_store = not isinstance(settings.store, Store)
        options: dict[str, object] = {}
        if settings.results_dir is not None:
            options["results_dir"] = settings.results_dir
        budget = settings.max_stored_bytes
        if budget is not None and self._owns_store:
            options["max_stored_bytes"] = budget
        store_settings = {s.name: getattr(settings, s.name) for s in STORE_SETTINGS}
        store = open_store(settings.store, store_settings, **options)
        if budget is not None:
            store.max_stored_bytes = budget
        try:
            check_budget(settings.max_result, store.max_stored_bytes)
        except ValueError:
            if self._owns_store:
                store.close()
            raise
        if self._owns_store and store.shared:
            probe_store(store)
        self.max_stored_bytes = store.max_stored_bytes
        return store

    def _make_answers(self, settings: Settings) -> None:
        """The routes, and the parts of the HTTP side they lead to."""
        self._match = compile_patterns(self.paths)
        self._prefer_match = compile_patterns(self.prefer_paths) if self.prefer_paths else None
        announce_patterns(self.paths, self.prefer_paths, self.methods)
        answers = make_answers(
            self.app,
            self.store,
            settings,
            executor=self.executor,
            runner=self.runner,
            closing=self._closing,
        )
        self.urls, self._accepted, self._scrape = answers.urls, answers.accepted, answers.scrape
        if self.metrics_path is not None or metrics.INSTRUMENTS is not None:
            # Metrics are read here (or the process counts already): counting
            # on, this deployment's series at 0 from the start.
            self._scrape.start()
        self._status, self._submission = answers.status, answers.submission
        self.callbacks, self._sender = answers.callbacks, answers.sender
        self._waits = answers.waits

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == self.metrics_path:
            return self._scrape(environ, start_response)
        method = environ["REQUEST_METHOD"]
        try:
            if path.startswith(self.status_path):
                self._waits.seen()  # the server's threads: how many may wait
                return self._status(environ, start_response, path[len(self.status_path) :])
            if method in self.methods:
                if (pattern := self._match(path, method)) is not None:
                    self._waits.seen()
                    return self._submission(environ, start_response, "", pattern)
                if (
                    self._prefer_match is not None
                    and (pattern := self._prefer_match(path, method)) is not None
                    and "respond-async" in parse_prefer(environ.get("HTTP_PREFER"))
                ):
                    self._waits.seen()
                    return self._submission(environ, start_response, "respond-async", pattern)
        except StoreFull as exc:
            # A byte budget spent or a full disk: said as such (it passes).
            logger.warning("asyncwsgi: %s %s: the task store is full: %s", method, path, exc)
            return unavailable("the task store is unavailable: it is full", self.retry_after)(
                environ, start_response
            )
        except StoreUnavailable as exc:
            # Every store call comes before start_response: nothing was sent.
            logger.warning("asyncwsgi: %s %s: the task store is unavailable: %s", method, path, exc)
            return unavailable("the task store is unavailable", self.retry_after)(
                environ, start_response
            )
        return self.app(environ, start_response)

    def status_url(self, environ: WSGIEnvironment, task_id: str) -> str:
        """The task's status URL as sent in ``Location`` and ``status_url``
        (see :class:`~asyncwsgi.http.urls.StatusURLs`)."""
        return self.urls(environ, task_id)

    def retry_after_for(self, age: float) -> int:
        """Seconds a client should wait before the next poll of a task this old:
        ``retry_after`` while the task is young, then a tenth of its age,
        capped at ``max_retry_after``; a long task is polled less often."""
        return self._accepted.retry_after_for(age)

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The registry ``metrics_path`` answers from: asyncwsgi's metrics
        (every process's, summed, in prometheus_client's multiprocess mode)
        and the queued/running gauges read from this middleware's store.
        Needs prometheus_client; reading it switches counting on in this
        process (:func:`asyncwsgi.metrics.enable`)."""
        return self._scrape.registry

    # -- shutting down ---------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once close() was called: new submissions get 503."""
        return self._closing.is_set()

    @closed.setter
    def closed(self, value: bool) -> None:
        if value:
            self._closing.set()
        else:
            self._closing.clear()

    @property
    def task_app(self) -> WSGIApplication:
        """The application this middleware's tasks run: what a remote worker
        given this middleware's import string calls instead of it."""
        return self.app

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting tasks (new submissions get 503), then wait until the
        queued and running ones are done, at most ``timeout`` seconds. Tasks
        still unfinished then are ended as 500, never left running. True if
        every task finished by itself; then a store this middleware opened
        from a URL is closed too (call this once the server stops serving).
        Results stay in the store for another process or middleware to read."""
        self.closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        unfinished = self.executor.unfinished
        if unfinished:
            logger.warning(
                "asyncwsgi: closing: waiting %s for %d unfinished task%s",
                "as long as they take" if timeout is None else f"up to {timeout:g} s",
                unfinished,
                "" if unfinished == 1 else "s",
            )
        finished = self.executor.shutdown(timeout)
        if not finished:
            for job in self.executor.abandon():
                self.runner.deliver(job.task_id, error_result(503, "server shut down"))
            self.runner.fail_running("the server shut down before the task finished")
        # Results the store did not take yet (an outage) get the rest of the time.
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        finished = self.runner.drain(remaining) and finished
        self.runner.stop()
        if self._sender is not None:
            self._sender.stop()
        if finished and self._owns_store:
            # Opened here from a URL, so closed here; after a timeout an app
            # may still be running and write its late result, so it stays open.
            self.store.close()
        return finished


class _ClosedAtExit:
    """The middlewares with a shared store that a normal exit of this process
    closes, so that the store never keeps their tasks "running" until the
    lease runs out. One atexit registration serves them all; they are held
    weakly, so a middleware dropped is not kept alive (nor its hook)."""

    def __init__(self) -> None:
        self._middlewares: weakref.WeakSet[AsyncMiddleware] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._registered = False

    def add(self, middleware: AsyncMiddleware) -> None:
        with self._lock:
            if not self._registered:
                atexit.register(self.close_all)
                self._registered = True
            self._middlewares.add(middleware)

    def close_all(self) -> None:
        # One grace for the whole exit, not one per middleware.
        deadline = time.monotonic() + _EXIT_GRACE
        running = [m for m in list(self._middlewares) if not m.closed]
        for middleware in running:
            middleware.closed = True  # all stop accepting before any waits
        for middleware in running:
            middleware.close(timeout=max(0.0, deadline - time.monotonic()))


# The one process-wide hook: atexit itself is process-wide state.
_AT_EXIT = _ClosedAtExit()
