"""The job: everything a task's run needs, in one typed message.

The middleware makes one :class:`Job` per accepted task and hands it to the
executor. The thread pool passes it to the runner as it is; an executor
whose workers are other processes (Celery, RQ, Django Tasks) sends
:meth:`Job.encode` (JSON-safe, whatever the engine's serializer) and its
worker runs :meth:`Job.decode`. Nothing about the task travels beside it:
no positional argument lists, no keys hidden in the environ.

A request body up to ``spool_threshold`` travels in the message (base64); a
larger one never enters an engine's queue: it was spooled into the store
before the 202, the message names only its size and SHA-256, and the worker
reads it from the store as the app consumes ``wsgi.input``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from .environ import json_environ

if TYPE_CHECKING:
    from .stores.base import Store
    from .task import Body

__all__ = ["VERSION", "BadJobMessage", "Job"]

#: The message's shape. A worker reads this version only: a message of
#: another is refused (:class:`BadJobMessage`), never half understood.
VERSION = 1


class BadJobMessage(ValueError):
    """A job message this worker cannot read: another version, or a field
    missing or of the wrong type."""


@dataclass(slots=True, kw_only=True)
class Job:
    """An accepted task, as its executor gets it.

    ``environ`` is the request's snapshot (only its JSON-safe part crosses
    to another process) and ``body`` the request body, in memory or spooled
    in the store. ``accepted`` is when the task was accepted (wall clock,
    for the queue wait measured where it runs); ``pattern`` the configured
    path pattern that made it a task (its metrics' label, wherever it runs).

    ``trace_parent`` is the submit span's context, in this process only:
    across processes the submit span's W3C ``traceparent`` and
    ``tracestate`` travel in the environ, as the request headers the app
    reads (see :mod:`asyncwsgi.tracing`).

    ``deadline`` is when the task ends as 504 (``timeout``, counted from
    acceptance), whichever process runs it; ``queued_until`` when a task
    still in an engine's queue is no longer started (``queue_timeout``).

    The rest is what a worker in another process needs to run it as the
    web side would: the store's URL (``store``, which it opens) and the web
    side's ``max_result``, ``max_stored_bytes`` (its store takes on the same
    byte budget), ``lease`` and ``spool_threshold``.
    """

    task_id: str
    environ: dict[str, Any]
    body: bytes | Body
    accepted: float
    pattern: str | None = None
    trace_parent: object | None = None
    deadline: float | None = None
    queued_until: float | None = None
    store: str | None = None
    max_result: int
    max_stored_bytes: int | None = None
    lease: float
    spool_threshold: int

    def encode(self) -> dict[str, Any]:
        """The message a worker in another process gets: JSON-safe."""
        if self.store is None:
            raise ValueError("a job for another process needs its store's URL")
        body: str | dict[str, Any]
        if isinstance(self.body, bytes):
            body = base64.b64encode(self.body).decode("ascii")
        else:
            body = {"size": self.body.size, "sha256": self.body.sha256}
        return {
            "version": VERSION,
            "task_id": self.task_id,
            "environ": json_environ(self.environ),
            "body": body,
            "accepted": self.accepted,
            "pattern": self.pattern,
            "deadline": self.deadline,
            "queued_until": self.queued_until,
            "store": self.store,
            "max_result": self.max_result,
            "max_stored_bytes": self.max_stored_bytes,
            "lease": self.lease,
            "spool_threshold": self.spool_threshold,
        }

    @classmethod
    def decode(cls, message: object, stores: Callable[[str, int | None], Store]) -> Job:
        """The job of ``message`` (made by :meth:`encode`). A spooled body is
        found in the store that ``stores(url, max_stored_bytes)`` opens from
        the message's URL and byte budget.
        Raises :class:`BadJobMessage` for a message of another version, or
        one with a field missing or of the wrong type."""
        if not isinstance(message, Mapping):
            raise BadJobMessage(f"a job message is a JSON object, not {type(message).__name__}")
        version = message.get("version")
        if version != VERSION:
            raise BadJobMessage(
                f"job message version {version!r}: this worker reads version {VERSION} only "
                "(run workers of the same asyncwsgi release as the web processes)"
            )
        unknown = set(message) - _ENCODED
        if unknown:
            raise BadJobMessage(f"job message has unknown fields: {', '.join(sorted(unknown))}")
        read = _Reader(message)
        store = read.text("store")
        max_stored_bytes = read.optional_whole("max_stored_bytes")
        task_id = read.text("task_id")
        sent = message.get("body")
        body: bytes | Body
        if isinstance(sent, str):
            try:
                body = base64.b64decode(sent, validate=True)
            except binascii.Error as exc:
                raise BadJobMessage(f"job message field 'body' is not base64: {exc}") from None
        elif isinstance(sent, Mapping):
            spooled = _Reader(sent)
            size, sha256 = spooled.whole("size"), spooled.text("sha256")
            body = stores(store, max_stored_bytes).request_body(task_id, size, sha256)
        else:
            raise BadJobMessage("job message field 'body' is neither base64 nor a size and digest")
        environ = message.get("environ")
        if not isinstance(environ, dict):
            raise BadJobMessage("job message field 'environ' is not an object")
        return cls(
            task_id=task_id,
            environ=environ,
            body=body,
            accepted=read.number("accepted"),
            pattern=read.optional_text("pattern"),
            deadline=read.optional_number("deadline"),
            queued_until=read.optional_number("queued_until"),
            store=store,
            max_result=read.whole("max_result"),
            max_stored_bytes=max_stored_bytes,
            lease=read.number("lease"),
            spool_threshold=read.whole("spool_threshold"),
        )


# What encode() writes: every field but the in-process trace context, and
# the version.
_ENCODED = frozenset({f.name for f in fields(Job) if f.name != "trace_parent"} | {"version"})


class _Reader:
    """One message's fields, each checked for its type as it is read."""

    __slots__ = ("message",)

    def __init__(self, message: Mapping[str, Any]) -> None:
        self.message = message

    def _get(self, name: str) -> Any:
        if name not in self.message:
            raise BadJobMessage(f"job message field {name!r} is missing")
        return self.message[name]

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise BadJobMessage(f"job message field {name!r} is not a string")
        return value

    def optional_text(self, name: str) -> str | None:
        return None if self._get(name) is None else self.text(name)

    def whole(self, name: str) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadJobMessage(f"job message field {name!r} is not an integer")
        return value

    def optional_whole(self, name: str) -> int | None:
        return None if self._get(name) is None else self.whole(name)

    def number(self, name: str) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadJobMessage(f"job message field {name!r} is not a number")
        if not math.isfinite(value):
            raise BadJobMessage(f"job message field {name!r} is not finite")
        return float(value)

    def optional_number(self, name: str) -> float | None:
        return None if self._get(name) is None else self.number(name)
