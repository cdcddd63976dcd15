"""The status URL: ``GET``/``HEAD`` (202 while the task runs, then its
result; ``Prefer: wait`` makes it a long-poll), ``DELETE`` (cancel), and the
routes under it: the task list and the event stream."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import metrics
from ..events import wants_events
from ..logs import task_extra
from ..owner import owner_hash
from ..prefer import parse_prefer, wait_seconds
from ..stores.base import ACTIVE
from ..task import TaskRecord
from .accepted import Accepted
from .callbacks import SenderPerProcess
from .replay import answer_result
from .responses import gone, method_not_allowed, no_content, not_found
from .stream import Streams
from .tasklist import TaskList
from .waits import Waits

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..executors import Executor
    from ..settings import Settings
    from ..stores import Store

__all__ = ["ID_RE", "Status"]

logger = logging.getLogger("asyncwsgi")

#: What a task id looks like (secrets.token_urlsafe(24)).
ID_RE = re.compile(r"[A-Za-z0-9_-]{32}")
_METHODS = ("GET", "HEAD", "DELETE")
_ALLOW = ", ".join(_METHODS)


class Status:
    """``status(environ, start_response, task_id)``: a request to
    ``status_path + task_id`` (an empty id: the task list)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        executor: Executor,
        accepted: Accepted,
        task_list: TaskList,
        streams: Streams,
        waits: Waits,
        callbacks: SenderPerProcess | None,
    ) -> None:
        self.store = store
        self.owner = settings.owner
        self.executor = executor
        self.accepted = accepted
        self.task_list = task_list
        self.streams = streams
        self.waits = waits
        self.callbacks = callbacks

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse, task_id: str
    ) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if method not in _METHODS:
            response = method_not_allowed("use GET, HEAD or DELETE on a status URL", _ALLOW)
            return response(environ, start_response)
        if self.callbacks is not None:
            self.callbacks.start()
        if not task_id and method != "DELETE":
            return self.task_list(environ, start_response)
        record = self._read(environ, task_id)
        if record is None:
            return not_found(environ, start_response)
        if method == "DELETE":
            return self._delete(environ, start_response, record)
        if record.state == "expired":
            return gone(environ, start_response)
        if method == "GET" and wants_events(environ):
            return self.streams(environ, start_response, record)
        return self._answer(environ, start_response, record)

    def existing(
        self, environ: WSGIEnvironment, start_response: StartResponse, task_id: str
    ) -> Iterable[bytes]:
        """The answer a submission gets for a task that exists already (its
        Idempotency-Key was used before, or it expired while the submission
        waited): the status, whatever the submission's method."""
        if self.callbacks is not None:
            self.callbacks.start()
        record = self._read(environ, task_id)
        if record is None:
            return not_found(environ, start_response)
        if record.state == "expired":
            return gone(environ, start_response)
        return self._answer(environ, start_response, record)

    def _read(self, environ: WSGIEnvironment, task_id: str) -> TaskRecord | None:
        """The task, if the id is one and the caller owns it."""
        if not ID_RE.fullmatch(task_id):
            return None
        record = self.store.get(task_id)
        if record is None or not self._owns(environ, record):
            return None
        return record

    def _owns(self, environ: WSGIEnvironment, record: TaskRecord) -> bool:
        if self.owner is None:
            return True
        value = self.owner(environ)
        if not value or record.owner is None:
            return False
        return hmac.compare_digest(owner_hash(value), record.owner)

    def _delete(
        self, environ: WSGIEnvironment, start_response: StartResponse, record: TaskRecord
    ) -> Iterable[bytes]:
        task_id = record.id
        if not self.store.delete(task_id):
            return not_found(environ, start_response)
        self.executor.cancel(task_id)
        if self.executor.runner is not None:
            self.executor.runner.cancel(task_id)  # running here: its capture stops
        if record.state in ACTIVE:
            if metrics.INSTRUMENTS is not None:
                metrics.INSTRUMENTS.cancelled.inc()
            logger.info("asyncwsgi: task %s cancelled", task_id, extra=task_extra(task_id))
        return no_content(environ, start_response)

    def _answer(
        self, environ: WSGIEnvironment, start_response: StartResponse, record: TaskRecord
    ) -> Iterable[bytes]:
        applied = ""
        if record.state != "done":
            wait = wait_seconds(parse_prefer(environ.get("HTTP_PREFER")))
            if wait:
                done, waited = self.waits.wait(record.id, wait)
                if waited is not None:
                    if done is None:
                        return not_found(environ, start_response)  # deleted while we waited
                    applied = f"wait={waited}"
                    record = done
                if record.state == "expired":
                    return gone(environ, start_response)
        if record.state == "done" and record.result is not None:
            return answer_result(environ, start_response, record.result)
        if record.state not in ("queued", "running"):
            return not_found(environ, start_response)  # deleted while we waited
        return self.accepted(environ, start_response, record, applied)
