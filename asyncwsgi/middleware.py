"""AsyncMiddleware: marked requests become background tasks with a status URL."""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException

from .callbacks import CallbackSender, allowed_callback, parse_secret
from .capture import Spool
from .environ import read_body, snapshot
from .executor import Executor, ThreadExecutor
from .http.accepted import Accepted
from .http.callbacks import SenderPerProcess
from .http.replay import answer_result
from .http.responses import (
    http_error,
    not_found,
    text,
    unavailable,
)
from .http.scrape import Scrape
from .http.status import Status
from .http.stream import Streams
from .http.tasklist import TaskList
from .http.urls import StatusURLs
from .http.waits import Waits
from .logs import task_extra
from .metrics import INSTRUMENTS
from .owner import owner_hash
from .patterns import Pattern, compile_patterns, pattern_label
from .prefer import parse_prefer, wait_seconds
from .results import error_result
from .runner import ACCEPTED, PATTERN, TaskRunner
from .settings import POOL_SIZE, Settings, check_budget
from .stores import Store, open_store
from .stores.base import ACTIVE, StoreFull, StoreUnavailable
from .stores.settings import STORE_SETTINGS
from .task import Callback, Job, TaskRecord
from .tracing import activate, carry, start_submit

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from opentelemetry.trace import Span
    from prometheus_client import CollectorRegistry

__all__ = ["AsyncMiddleware"]

logger = logging.getLogger("asyncwsgi")

# secrets.token_urlsafe(24): 192 random bits in 32 URL-safe characters.
_ID_BYTES = 24
_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
# How long a process exiting normally (a server's graceful stop) waits for its
# running tasks before it fails them, so that a shared store never keeps them
# "running" until their lease runs out.
_EXIT_GRACE = 10.0
# The 202's confirmation that a submission's Callback-URL was taken.
CALLBACK_HEADER = "Callback-Accepted"


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
    min_replicas: int | None
    retry_after: int
    max_retry_after: int
    prefer_paths: list[Pattern]
    max_wait: float
    max_waiting: int
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
        min_replicas: int | None = None,
        retry_after: int = 1,
        max_retry_after: int = 30,
        prefer_paths: Iterable[Pattern] = (),
        max_wait: float = 10.0,
        max_waiting: int = 2,
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
        # Every option is checked by its rule in options.OPTIONS (one line
        # there for each keyword argument here: a test holds them together),
        # then the rules across options.
        settings = Settings.build(locals())
        # Set by close(): new submissions get 503 (shared with the parts that ask).
        self._closing = threading.Event()
        self.settings = settings
        # Every option, an attribute of the same name (declared above).
        self.__dict__.update(settings.as_dict())
        self.app = app
        self._match = compile_patterns(self.paths)
        self._prefer_match = compile_patterns(self.prefer_paths) if self.prefer_paths else None
        if INSTRUMENTS is not None:
            INSTRUMENTS.declare(map(pattern_label, [*self.paths, *self.prefer_paths]))
        # A store opened here from a URL is this middleware's to close.
        self._owns_store = not isinstance(store, Store)
        store_options: dict[str, object] = {}
        if results_dir is not None:
            store_options["results_dir"] = results_dir
        if max_stored_bytes is not None and not isinstance(store, Store):
            store_options["max_stored_bytes"] = max_stored_bytes
        store_settings = {s.name: getattr(settings, s.name) for s in STORE_SETTINGS}
        self.store = open_store(store, store_settings, **store_options)
        if max_stored_bytes is not None:
            self.store.max_stored_bytes = max_stored_bytes
        self.max_stored_bytes = self.store.max_stored_bytes
        try:
            check_budget(max_result, self.max_stored_bytes)
        except ValueError:
            if self._owns_store:
                self.store.close()
            raise
        self.executor = (
            executor if executor is not None else ThreadExecutor(self.max_workers or POOL_SIZE)
        )
        # The answers, each given what it needs.
        self.urls = StatusURLs(self.status_path, self.location_base)
        self._accepted = Accepted(settings, self.urls)
        self._scrape = Scrape(self.store)
        self._task_list = TaskList(self.store, settings, self.urls)
        self._waits = Waits(self.store, settings)
        self._streams = Streams(self.store, settings, self.urls, self._waits)
        self.runner = TaskRunner(
            app,
            self.store,
            max_result=max_result,
            lease=lease,
            timeout=timeout,
            queue_timeout=queue_timeout,
            spool_threshold=spool_threshold,
        )
        self.executor.bind(self.runner)
        # Lapsed leases are judged by every process, unasked (a shared store).
        self.runner.sweep()
        self.callbacks: CallbackSender | None = None
        self._sender: SenderPerProcess | None = None
        if self.callback_allow is not None and callback_secret is not None:
            self.callbacks = CallbackSender(self.store, parse_secret(callback_secret))
            self._sender = SenderPerProcess(self.callbacks, self._closing)
        self._status = Status(
            self.store,
            settings,
            executor=self.executor,
            accepted=self._accepted,
            task_list=self._task_list,
            streams=self._streams,
            waits=self._waits,
            callbacks=self._sender,
        )
        self._warned_multiprocess = False
        if self.store.shared:
            _AT_EXIT.add(self)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == self.metrics_path:
            return self._scrape(environ, start_response)
        method = environ["REQUEST_METHOD"]
        try:
            if path.startswith(self.status_path):
                return self._status(environ, start_response, path[len(self.status_path) :])
            if method in self.methods:
                if (pattern := self._match(path, method)) is not None:
                    return self._submit(environ, start_response, "", pattern)
                if (
                    self._prefer_match is not None
                    and (pattern := self._prefer_match(path, method)) is not None
                    and "respond-async" in parse_prefer(environ.get("HTTP_PREFER"))
                ):
                    return self._submit(environ, start_response, "respond-async", pattern)
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

    # -- submitting ------------------------------------------------------

    def _submit(
        self, environ: WSGIEnvironment, start_response: StartResponse, applied: str, pattern: str
    ) -> Iterable[bytes]:
        if "asyncwsgi.task" in environ:
            # A task's own request replayed through this middleware again.
            return self.app(environ, start_response)
        span = start_submit(environ)
        try:
            if span is None:
                return self._accept(environ, start_response, applied, pattern, None)
            with activate(span):
                return self._accept(environ, start_response, applied, pattern, span)
        except StoreUnavailable:
            _rejected("store_unavailable", pattern)  # answered 503 by __call__
            raise

    def _accept(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        applied: str,
        pattern: str,
        span: Span | None,
    ) -> Iterable[bytes]:
        if self.closed:
            _rejected("closed", pattern)
            return unavailable("not accepting new tasks", self.retry_after)(environ, start_response)
        if environ.get("wsgi.multiprocess") and not self.store.shared:
            self._warn_multiprocess()

        owner: str | None = None
        if self.owner is not None:
            value = self.owner(environ)
            if not value:
                return text(403, "this request has no owner to bind a task to")(
                    environ, start_response
                )
            owner = owner_hash(value)

        callback_url: str | None = None
        if self._sender is not None:
            self._sender.start()
            callback_url = environ.get("HTTP_CALLBACK_URL")
            if callback_url is not None and not allowed_callback(
                callback_url, self.callback_allow or []
            ):
                return text(400, "Callback-URL is not an address this service calls back")(
                    environ, start_response
                )

        key: str | None = None
        raw_key = environ.get("HTTP_IDEMPOTENCY_KEY")
        if raw_key is not None:
            if not _KEY_RE.fullmatch(raw_key):
                return text(400, "Idempotency-Key must be 1 to 255 visible ASCII characters")(
                    environ, start_response
                )
            key = hashlib.sha256(f"{owner or ''}\x00{raw_key}".encode()).hexdigest()

        # The whole body first: the key is bound only together with the task,
        # in one atomic create, so however slow the upload, a retry either
        # finds the task or creates it, never a second one. A body above
        # spool_threshold goes to the store as it arrives, not into memory.
        task_id = secrets.token_urlsafe(_ID_BYTES)
        store = self.store
        spool = Spool(self.spool_threshold, lambda: store.open_sink(task_id, "request"))
        created = False
        extra: list[tuple[str, str]] = []
        try:
            try:
                body = read_body(environ, self.max_body, spool)
            except HTTPException as exc:
                if exc.code == 413:
                    _rejected("too_large", pattern)
                return http_error(exc)(environ, start_response)

            now = time.time()
            record = TaskRecord(task_id, created=now, owner=owner, ttl=self.result_ttl)
            # The executor knows where its queue lives, so how long a task may
            # wait there (a lease renewed by this process, or a broker's limit).
            record.lease_until = self.executor.queued_until(now)
            if callback_url is not None:
                record.callback = Callback(callback_url, self.status_url(environ, task_id))
                extra.append((CALLBACK_HEADER, callback_url))
            fingerprint = _fingerprint(environ, spool.sha256) if key is not None else None
            # Refused unless the budget has room for one more result of
            # max_result: what its writer will reserve (runner._result_sink).
            outcome = store.create(
                record,
                key=key,
                fingerprint=fingerprint,
                limit=self.max_pending,
                room=self.max_result if self.max_result > self.spool_threshold else 0,
            )
            created = outcome.created
        finally:
            if created:
                spool.close()
                if spool.sink is not None:
                    self.runner.keep_clean()
            else:
                spool.discard()
        if outcome.existing is not None:
            bound = outcome.existing.fingerprint
            if fingerprint is None or bound is None or not hmac.compare_digest(bound, fingerprint):
                return text(422, "this Idempotency-Key was used with a different request")(
                    environ, start_response
                )
            return self._status.existing(environ, start_response, outcome.existing.task_id)
        if not outcome.created:
            _rejected("full", pattern)
            return unavailable("too many pending tasks", self.retry_after)(environ, start_response)
        job_environ = snapshot(environ)
        # When it was accepted, for the queue wait measured where it runs.
        job_environ[ACCEPTED] = repr(now)
        # Which pattern made it a task: the label of its metrics where it runs.
        job_environ[PATTERN] = pattern
        if span is not None:
            carry(job_environ, span, record.id)
        logger.debug("asyncwsgi: task %s accepted", record.id, extra=task_extra(record.id))
        try:
            self.executor.submit(Job(record.id, job_environ, body))
            self.runner.watch(record.id)
        except Exception:
            logger.exception(
                "asyncwsgi: could not queue task %s", record.id, extra=task_extra(record.id)
            )
            self.store.delete(record.id)
            _rejected("executor_unavailable", pattern)
            return unavailable("could not queue the task", self.retry_after)(
                environ, start_response
            )
        if INSTRUMENTS is not None:
            INSTRUMENTS.of(pattern).accepted.inc()

        wait = wait_seconds(parse_prefer(environ.get("HTTP_PREFER")))
        if wait:
            try:
                done, waited = self._waits.wait(record.id, wait)
            except StoreUnavailable as exc:
                # The task is accepted: its 202 stands, the client polls later.
                logger.warning(
                    "asyncwsgi: waiting on task %s: %s", record.id, exc, extra=task_extra(record.id)
                )
                done, waited = record, None
            if waited is not None:
                if done is None:
                    return not_found(environ, start_response)  # deleted while we waited
                record = done
                applied = f"wait={waited}" if not applied else f"{applied}, wait={waited}"
            if record.state == "done" and record.result is not None:
                return answer_result(environ, start_response, record.result, applied, extra)
            if record.state not in ACTIVE:  # expired already: a 202 never says so
                return self._status.existing(environ, start_response, record.id)
        return self._accepted(environ, start_response, record, applied, extra)

    def status_url(self, environ: WSGIEnvironment, task_id: str) -> str:
        """The task's status URL as sent in ``Location`` and ``status_url``
        (see :class:`~asyncwsgi.http.urls.StatusURLs`)."""
        return self.urls(environ, task_id)

    # -- live progress and the task list ------------------------------------

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
        Needs prometheus_client."""
        return self._scrape.registry

    def _warn_multiprocess(self) -> None:
        if not self._warned_multiprocess:
            self._warned_multiprocess = True
            logger.warning(
                "asyncwsgi: the server runs several processes but the task store is "
                "in-process: a poll that lands on another process gets 404. Use a shared "
                "store (store='sqlite:///tasks.db' or 'redis://...')."
            )

    # -- shutting down ---------------------------------------------------

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


def _fingerprint(environ: WSGIEnvironment, body_sha256: str) -> str:
    digest = hashlib.sha256()
    for part in ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE"):
        digest.update(environ.get(part, "").encode("latin-1", "replace") + b"\x00")
    digest.update(body_sha256.encode())
    return digest.hexdigest()


def _rejected(reason: str, pattern: str) -> None:
    if INSTRUMENTS is not None:
        INSTRUMENTS.reject(reason, pattern)
