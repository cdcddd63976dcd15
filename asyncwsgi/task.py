"""A task's data: its record in the store and its captured result.

The job an executor runs is :class:`asyncwsgi.job.Job`; what the app sees of
its own task (``environ["asyncwsgi.task"]``) is
:class:`asyncwsgi.runner.handle.TaskHandle`."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

__all__ = [
    "Body",
    "BodyKind",
    "BodySink",
    "Callback",
    "Created",
    "Delivery",
    "KeyEntry",
    "Progress",
    "Result",
    "State",
    "TaskRecord",
    "read_range",
]

State = Literal["queued", "running", "done", "expired"]
Progress = dict[str, Any]
#: What a spooled body is to its task: the request's body or the result's.
BodyKind = Literal["request", "result"]


class Body(abc.ABC):
    """A body kept out of process memory (a file, chunks in Redis).

    ``size`` is its length in bytes and ``sha256`` the hex digest of its
    bytes, both known once it was written in full.
    """

    __slots__ = ("size", "sha256")

    def __init__(self, size: int, sha256: str) -> None:
        self.size = size
        self.sha256 = sha256

    @abc.abstractmethod
    def open(self) -> IO[bytes]:
        """A new reader at offset 0, seekable; the caller closes it. Raises
        ``FileNotFoundError`` when the body is gone (expired or deleted)."""

    def chunks(self, start: int, stop: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``stop`` in pieces, read as they are sent (a
        store may give its own pieces, without copying them into a buffer)."""
        with self.open() as reader:
            yield from read_range(reader, start, stop)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.size} bytes>"


def read_range(reader: IO[bytes], start: int, stop: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``stop`` of an open body, in pieces."""
    reader.seek(start)
    remaining = stop - start
    while remaining > 0:
        piece = reader.read(min(remaining, 256 * 1024))
        if not piece:
            raise OSError("the stored body ended before its recorded size")
        remaining -= len(piece)
        yield piece


class BodySink(abc.ABC):
    """Where a store takes a body too large for memory, written as it comes.

    ``write`` may raise :class:`~asyncwsgi.stores.base.StoreFull` (the byte
    budget is spent) or ``OSError`` (a full disk); the writer then calls
    :meth:`discard`. After the last write, :meth:`commit` gives the
    :class:`Body` to hand to the store (``finish`` or ``create``); once the
    store holds it, or no longer wants it, :meth:`close` lets it go.
    """

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def reserve(self, nbytes: int) -> None:
        """Take ``nbytes`` of the byte budget ahead of the writes, all or
        nothing (:class:`~asyncwsgi.stores.base.StoreFull` when they are not
        free): writes within them take no more. :meth:`commit` gives back
        what was not written."""

    @abc.abstractmethod
    def commit(self, size: int, sha256: str) -> Body: ...

    @abc.abstractmethod
    def discard(self) -> None:
        """Remove what was written and give its bytes back to the budget."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """The store holds the body now (or dropped it): release the writer's
        handles, keep the data."""


@dataclass(slots=True)
class Result:
    """A captured WSGI response: what a server would have sent, exactly."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes | Body

    @property
    def size(self) -> int:
        body = self.body
        return len(body) if isinstance(body, bytes) else body.size

    @property
    def code(self) -> int:
        """The status code (``200`` of ``"200 OK"``)."""
        return int(self.status[:3])


@dataclass(slots=True)
class Callback:
    """Where to POST when the task ends (``Callback-URL``), and the status URL
    the notice names."""

    url: str
    status_url: str


@dataclass(slots=True)
class TaskRecord:
    """One row of the task table.

    ``owner`` is a hash of the submitter's owner value (never the value itself).
    ``lease_until`` is when the task (running, or queued in a process's own
    pool) is presumed lost unless that process heartbeats again; a task
    queued elsewhere (a Celery broker) has none until it starts.
    ``state == "expired"`` is a tombstone: the result
    was dropped after its TTL and only the fact remains, so a poll gets 410.
    """

    id: str
    state: State = "queued"
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    progress: Progress | None = None
    result: Result | None = None
    owner: str | None = None
    lease_until: float | None = None
    ttl: float = 300.0
    callback: Callback | None = None


@dataclass(slots=True)
class Delivery:
    """A completion callback due to be sent, as claimed from the store.

    ``status`` is the app's status code; ``attempts`` how many were made
    before; ``deadline`` when to give up (the result's expiry: past it the
    receiver could not fetch the result anyway); ``claim`` the token that
    proves this process still holds the claim when it reports back.
    """

    task_id: str
    url: str
    status_url: str
    status: int
    finished: float
    attempts: int
    deadline: float
    claim: str


@dataclass(slots=True, frozen=True)
class KeyEntry:
    """What an ``Idempotency-Key`` is bound to: the task created with it, and
    the fingerprint of the request that created it."""

    task_id: str
    fingerprint: str | None


@dataclass(slots=True, frozen=True)
class Created:
    """What :meth:`Store.create <asyncwsgi.stores.base.Store.create>` did.

    ``created``: the record was written. Otherwise either the key was already
    bound (``existing`` names that task; nothing was written) or the table was
    full (``existing`` is None). True in a boolean context only when created.
    """

    created: bool
    existing: KeyEntry | None = None

    def __bool__(self) -> bool:
        return self.created
