"""A marked request becomes a task: its owner, ``Idempotency-Key`` and
``Callback-URL`` read, its body read whole (spooled to the store above
``spool_threshold``), the task created in the store and queued, then the 202
(or, with ``Prefer: wait``, the result when it is ready in time)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException

from .. import metrics
from ..callbacks import allowed_callback
from ..capture import Spool
from ..environ import read_body, snapshot
from ..job import Job
from ..logs import task_extra
from ..owner import owner_hash
from ..prefer import parse_prefer, wait_seconds
from ..stores.base import ACTIVE, StoreUnavailable
from ..task import Body, Callback, TaskRecord
from ..tracing import INSTALLED as TRACING
from ..tracing import activate, carry, start_submit
from .accepted import Accepted
from .callbacks import SenderPerProcess
from .replay import answer_result
from .responses import http_error, not_found, text, unavailable
from .status import Status
from .urls import StatusURLs
from .waits import Waits

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from opentelemetry.trace import Span

    from ..executors import Executor
    from ..runner import TaskRunner
    from ..settings import Settings
    from ..stores import Store

__all__ = ["CALLBACK_HEADER", "Submission"]

logger = logging.getLogger("asyncwsgi")

# The 202's confirmation that a submission's Callback-URL was taken.
CALLBACK_HEADER = "Callback-Accepted"
# secrets.token_urlsafe(24): 192 random bits in 32 URL-safe characters.
_ID_BYTES = 24
_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")

# An answer not yet given: called with (environ, start_response).
Answer = Callable[["WSGIEnvironment", "StartResponse"], Iterable[bytes]]


@dataclass(frozen=True)
class _Asked:
    """What the request's headers ask for, checked."""

    owner: str | None
    callback_url: str | None
    key: str | None


@dataclass(frozen=True)
class _Created:
    record: TaskRecord
    body: bytes | Body
    extra: list[tuple[str, str]]


class Submission:
    """``submission(environ, start_response, applied, pattern)``: a request
    that ``pattern`` marked (``applied`` is ``respond-async`` when it became
    a task by that preference)."""

    def __init__(
        self,
        app: WSGIApplication,
        store: Store,
        settings: Settings,
        *,
        executor: Executor,
        runner: TaskRunner,
        urls: StatusURLs,
        accepted: Accepted,
        status: Status,
        waits: Waits,
        sender: SenderPerProcess | None,
        closing: threading.Event,
    ) -> None:
        self.app = app
        self.store = store
        self.settings = settings
        self.executor = executor
        self.runner = runner
        self.urls = urls
        self.accepted = accepted
        self.status = status
        self.waits = waits
        self.sender = sender
        self.closing = closing
        self._warned_multiprocess = False

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse, applied: str, pattern: str
    ) -> Iterable[bytes]:
        if "asyncwsgi.task" in environ:
            # A task's own request replayed through this middleware again.
            return self.app(environ, start_response)
        span = start_submit(environ) if TRACING else None
        try:
            if span is None:
                return self._accept(environ, start_response, applied, pattern, None)
            with activate(span):
                return self._accept(environ, start_response, applied, pattern, span)
        except StoreUnavailable:
            rejected("store_unavailable", pattern)  # answered 503 by the middleware
            raise

    def _accept(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        applied: str,
        pattern: str,
        span: Span | None,
    ) -> Iterable[bytes]:
        if self.closing.is_set():
            rejected("closed", pattern)
            return self._unavailable("not accepting new tasks")(environ, start_response)
        if environ.get("wsgi.multiprocess") and not self.store.shared:
            self._warn_multiprocess()
        asked = self._read_headers(environ)
        if not isinstance(asked, _Asked):
            return asked(environ, start_response)
        created = self._create(environ, pattern, asked)
        if not isinstance(created, _Created):
            return created(environ, start_response)
        refused = self._queue(environ, created, pattern, span)
        if refused is not None:
            return refused(environ, start_response)
        return self._answer(environ, start_response, created, applied)

    def _read_headers(self, environ: WSGIEnvironment) -> _Asked | Answer:
        settings = self.settings
        owner: str | None = None
        if settings.owner is not None:
            value = settings.owner(environ)
            if not value:
                return text(403, "this request has no owner to bind a task to")
            owner = owner_hash(value)

        callback_url: str | None = None
        if self.sender is not None:
            self.sender.start()
            callback_url = environ.get("HTTP_CALLBACK_URL")
            if callback_url is not None and not allowed_callback(
                callback_url, settings.callback_allow or []
            ):
                return text(400, "Callback-URL is not an address this service calls back")

        key: str | None = None
        raw_key = environ.get("HTTP_IDEMPOTENCY_KEY")
        if raw_key is not None:
            if not _KEY_RE.fullmatch(raw_key):
                return text(400, "Idempotency-Key must be 1 to 255 visible ASCII characters")
            key = hashlib.sha256(f"{owner or ''}\x00{raw_key}".encode()).hexdigest()
        return _Asked(owner, callback_url, key)

    def _create(self, environ: WSGIEnvironment, pattern: str, asked: _Asked) -> _Created | Answer:
        # The whole body first: the key is bound only together with the task,
        # in one atomic create, so however slow the upload, a retry either
        # finds the task or creates it, never a second one. A body above
        # spool_threshold goes to the store as it arrives, not into memory.
        settings = self.settings
        task_id = secrets.token_urlsafe(_ID_BYTES)
        store = self.store
        spool = Spool(settings.spool_threshold, lambda: store.open_sink(task_id, "request"))
        created = False
        extra: list[tuple[str, str]] = []
        try:
            try:
                body = read_body(environ, settings.max_body, spool)
            except HTTPException as exc:
                if exc.code == 413:
                    rejected("too_large", pattern)
                return http_error(exc)

            now = time.time()
            record = TaskRecord(task_id, created=now, owner=asked.owner, ttl=settings.result_ttl)
            # The executor knows where its queue lives, so how long a task may
            # wait there (a lease renewed by this process, or a broker's limit).
            record.lease_until = self.executor.queued_until(now)
            if asked.callback_url is not None:
                record.callback = Callback(asked.callback_url, self.urls(environ, task_id))
                extra.append((CALLBACK_HEADER, asked.callback_url))
            fingerprint = _fingerprint(environ, spool.sha256) if asked.key is not None else None
            # Refused unless the budget has room for one more result of
            # max_result: what its writer will reserve (the runner's result sink).
            max_result = settings.max_result
            outcome = store.create(
                record,
                key=asked.key,
                fingerprint=fingerprint,
                limit=settings.max_pending,
                room=max_result if max_result > settings.spool_threshold else 0,
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
                return text(422, "this Idempotency-Key was used with a different request")
            return functools.partial(self.status.existing, task_id=outcome.existing.task_id)
        if not outcome.created:
            rejected("full", pattern)
            return self._unavailable("too many pending tasks")
        return _Created(record, body, extra)

    def _queue(
        self, environ: WSGIEnvironment, created: _Created, pattern: str, span: Span | None
    ) -> Answer | None:
        """The task handed to the executor; an answer only if it could not be."""
        record = created.record
        job_environ = snapshot(environ)
        settings, store, now = self.settings, self.store, record.created
        job = Job(
            task_id=record.id,
            environ=job_environ,
            body=created.body,
            accepted=now,
            pattern=pattern,
            trace_parent=None if span is None else carry(job_environ, span, record.id),
            deadline=None if settings.timeout is None else now + settings.timeout,
            queued_until=None if settings.queue_timeout is None else now + settings.queue_timeout,
            store=store.url,
            max_result=settings.max_result,
            max_stored_bytes=store.max_stored_bytes,
            lease=settings.lease,
            spool_threshold=settings.spool_threshold,
        )
        if logger.isEnabledFor(logging.DEBUG):  # its record's extra built only then
            logger.debug("asyncwsgi: task %s accepted", record.id, extra=task_extra(record.id))
        executor = self.executor
        try:
            executor.submit(job)
            self.runner.watch(record.id)
        except executor.unavailable as exc:
            # The queue cannot take it now (a broker down): one line, the
            # client told 503, and the task not left behind.
            logger.error(
                "asyncwsgi: could not queue task %s: %s: %s",
                record.id,
                type(exc).__name__,
                exc,
                extra=task_extra(record.id),
            )
            self.store.delete(record.id)
            rejected("executor_unavailable", pattern)
            return self._unavailable("could not queue the task")
        except Exception:
            # Broad on purpose: anything else is a bug in the executor (or its
            # engine), logged once with its traceback and answered 500; the
            # task is not left behind either.
            logger.exception(
                "asyncwsgi: a bug queueing task %s", record.id, extra=task_extra(record.id)
            )
            self.store.delete(record.id)
            return text(500, "the task could not be queued")
        if metrics.INSTRUMENTS is not None:
            metrics.INSTRUMENTS.of(pattern).accepted.inc()
        return None

    def _answer(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        created: _Created,
        applied: str,
    ) -> Iterable[bytes]:
        """The 202, or with ``Prefer: wait`` the result if it is ready in time."""
        record, extra = created.record, created.extra
        wait = wait_seconds(parse_prefer(environ.get("HTTP_PREFER")))
        if wait:
            try:
                done, waited = self.waits.wait(record.id, wait)
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
                return self.status.existing(environ, start_response, record.id)
        return self.accepted(environ, start_response, record, applied, extra)

    def _unavailable(self, message: str) -> Answer:
        return unavailable(message, self.settings.retry_after)

    def _warn_multiprocess(self) -> None:
        if not self._warned_multiprocess:
            self._warned_multiprocess = True
            logger.warning(
                "asyncwsgi: the server runs several processes but the task store is "
                "in-process: a poll that lands on another process gets 404. Use a shared "
                "store (store='sqlite:///tasks.db' or 'redis://...')."
            )


def rejected(reason: str, pattern: str) -> None:
    """A submission refused, counted by reason and pattern."""
    if metrics.INSTRUMENTS is not None:
        metrics.INSTRUMENTS.reject(reason, pattern)


def _fingerprint(environ: WSGIEnvironment, body_sha256: str) -> str:
    digest = hashlib.sha256()
    for part in ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE"):
        digest.update(environ.get(part, "").encode("latin-1", "replace") + b"\x00")
    digest.update(body_sha256.encode())
    return digest.hexdigest()
