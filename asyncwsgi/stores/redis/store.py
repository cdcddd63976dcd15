"""The Redis store: the task table's primitives, each one script."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

from ...task import (
    Body,
    BodyKind,
    BodySink,
    Created,
    Delivery,
    KeyEntry,
    Progress,
    Result,
    State,
    TaskRecord,
)
from ..base import Store, StoreUnavailable
from ..settings import split_url, store_keywords
from . import connect, deliveries, listeners, tasklist
from .bodies import BodyIO, RedisBody, budget_spent
from .codec import headers_json, num, record, record_fields, text
from .faults import BACKEND_ERRORS, fault
from .replicas import Replication, Unconfirmed, undo_create
from .scripts import Scripts

__all__ = ["RedisStore"]

# The settings a worker that opens the store by its URL must share.
_CARRIED = (
    "max_tombstones",
    "tombstone_ttl",
    "chunk_size",
    "spool_ttl",
    "min_replicas",
    "replica_timeout",
)


class RedisStore(Store):
    """Tasks in Redis, shared by every process that opens the same URL.

    ``client_or_url`` is a ``redis.Redis`` or ``RedisCluster`` client (made
    with ``decode_responses=False``; the caller closes it) or a URL (see the
    package's documentation for its forms), for which the store makes and
    closes its own client; :attr:`url` is how another process (a Celery
    worker) opens the same table, ``prefix=`` included. A finished task
    expires through Redis TTLs after its ``ttl``; a tombstone then answers
    410 for ``tombstone_ttl`` seconds, at most ``max_tombstones`` of them.
    With ``min_replicas``, a submission, a result, a deletion and a callback
    claim count only once that many replicas confirmed them within
    ``replica_timeout`` seconds (see :mod:`.replicas`).

    >>> store = RedisStore.from_url("redis://localhost:6379/0")
    """

    shared = True

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        *,
        prefix: str = connect.DEFAULT_PREFIX,
        max_tombstones: int = 10_000,
        tombstone_ttl: float = 3600.0,
        max_stored_bytes: int | None = None,
        chunk_size: int = 2**20,
        spool_ttl: float = 600.0,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
        local_copies: int = 0,
    ) -> None:
        if isinstance(client_or_url, str):
            base, in_url = split_url(client_or_url)
            if in_url:  # settings in the URL (?min_replicas=1) are keywords
                keywords = _with_url_settings(in_url, locals())
                return RedisStore.__init__(self, base, prefix=prefix, **keywords)
        self.max_stored_bytes = max_stored_bytes
        self._connection = connection = connect.connect(client_or_url, prefix)
        self.url = connection.url
        self.prefix = prefix = connection.prefix
        # (Checked before the client is made: nothing to close yet.)
        replication = Replication.of(min_replicas, replica_timeout, prefix)
        super().__init__(max_tombstones=max_tombstones, tombstone_ttl=tombstone_ttl)
        self.min_replicas, self.replica_timeout = min_replicas, replica_timeout
        self.scripts = Scripts(
            lambda: connection.lane,
            [prefix, num(tombstone_ttl * 1000), str(int(max_tombstones))],
            replication,
        )
        # The bytes of each chunk of a spooled body, and how long its writer
        # may take for the next one before it is reaped as a dead writer's.
        self.chunk_size, self.spool_ttl = chunk_size, spool_ttl
        self.bodies = BodyIO(
            lambda: connection.lane,
            self.scripts,
            prefix,
            chunk_size=chunk_size,
            spool_ttl=spool_ttl,
            budget=lambda: self.max_stored_bytes,
            clock=lambda: self.clock(),
            local_copies=local_copies,
        )
        if self.url is not None:
            self.url = connect.carry_settings(self.url, _changed(self))
        try:
            connection.client  # noqa: B018 (made now where it can be, and checked)
        except StoreUnavailable:
            pass  # a cluster down at start: every call says so until it is up
        if replication is not None and connection.made is not None:
            try:
                replication.check(connection.made, self._block_limit, prefix + "active")
            except ValueError:
                self.close()
                raise

    @property
    def client(self) -> connect.Client:
        """The redis-py client (:class:`StoreUnavailable` while a cluster
        cannot be reached to make it)."""
        return self._connection.client

    @property
    def _block_limit(self) -> float | None:
        return connect.block_limit(self.client)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on its own client for a ``redis://``, ``rediss://``,
        ``unix://``, ``redis+cluster://`` or ``redis+sentinel://`` URL;
        ``options`` are the store's keyword arguments, over the settings the
        URL carries (``?min_replicas=1``)."""
        base, in_url = split_url(url)
        return cls(base, **{**store_keywords("redis", in_url), **options})

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def _run(self, step: str, keys: list[str], args: list[Any]) -> Any:
        return self.scripts.run(step, keys, args)

    # -- the primitives --------------------------------------------------

    _backend_errors = BACKEND_ERRORS

    def _fault(self, exc: Exception) -> None:
        fault(exc)

    def _insert(
        self,
        record: TaskRecord,
        key: str | None,
        fingerprint: str | None,
        limit: int | None,
        room: int,
    ) -> Created:
        fields = record_fields(record)
        # Only what the task uses: its place in the task list, its body.
        uses = ""
        if self.listing is not False:
            uses += "l"
            fields += ["listed", "1"]
        if self.bodies.has_request(record.id):
            uses += "r"
            fields += ["request_body", "1"]
        if key is not None:
            fields += ["key", key]
        key_value = json.dumps([record.id, fingerprint]) if key is not None else ""
        try:
            answer = self._run(
                "create_task",
                [self._key("task", record.id)],
                [
                    record.id,
                    -1 if limit is None else int(limit),
                    num(self.clock()),
                    "inf" if record.lease_until is None else num(record.lease_until),
                    key or "",
                    key_value,
                    self._budget(),
                    room,
                    record.owner or "",
                    num(record.created),
                    uses,
                    *fields,
                ],
            )
        except Unconfirmed as exc:
            if exc.answer == 1:
                undo_create(self.scripts.run_unconfirmed, self._key("task", record.id), record.id)
            raise
        if answer == 1:
            self.bodies.forget_request(record.id)
        elif answer == -1:
            raise budget_spent(self.max_stored_bytes)
        if isinstance(answer, bytes):
            task_id, bound_fingerprint = json.loads(answer)
            return Created(False, KeyEntry(task_id, bound_fingerprint))
        return Created(bool(answer))

    def _read(self, task_id: str) -> TaskRecord | None:
        # A plain read: a script only for a task that is not there.
        raw = cast("dict[bytes, Any]", self._connection.lane.hgetall(self._key("task", task_id)))
        if not raw:
            if not self._tombstones:
                return None
            owner = self._run(
                "read_tombstone", [self._key("tomb", task_id)], [num(self.clock()), task_id]
            )
            return None if owner is None else self._tombstone(task_id, text(owner) or None)
        fields = {text(name): value for name, value in raw.items()}
        found = record(task_id, fields)
        if found.result is not None and "body_size" in fields:
            found.result.body = self.bodies.spooled_result(task_id, fields)
        return found

    @property
    def _tombstones(self) -> bool:
        """Whether a task past its expiry leaves a tombstone at all."""
        return self.max_tombstones > 0 and self.tombstone_ttl > 0

    def _start(self, task_id: str, now: float, lease_until: float) -> bool:
        started = self._run(
            "start_task", [self._key("task", task_id)], [task_id, num(now), num(lease_until)]
        )
        return bool(started)

    def _heartbeat(self, task_ids: list[str], lease_until: float) -> None:
        # The key is not read by the script: it routes the call in a cluster.
        self._run("renew_leases", [self.prefix + "leases"], [num(lease_until), *task_ids])

    def _set_progress(self, task_id: str, progress: Progress) -> None:
        self._run("set_progress", [self._key("task", task_id)], [json.dumps(progress), task_id])

    def _finish(
        self, task_id: str, result: Result, now: float, *, lapsed_before: float | None
    ) -> bool:
        body = result.body
        finished = self._run(
            "finish_task",
            [self._key("task", task_id)],
            [
                task_id,
                num(now),
                result.status,
                headers_json(result.headers),
                body if isinstance(body, bytes) else b"",
                "" if lapsed_before is None else num(lapsed_before),
                "" if isinstance(body, bytes) else f"{body.size} {body.sha256}",
            ],
        )
        return bool(finished)

    def _delete(self, task_id: str) -> bool:
        self.bodies.deleted(task_id)  # (a copy made again is harmless if this fails)
        return bool(self._run("delete_task", [self._key("task", task_id)], [task_id]))

    def _lapsed(self, now: float, limit: int) -> list[str]:
        # (Answers through Any: redis-py 7 annotates them as maybe awaitable.)
        ids: Any = self._connection.lane.zrangebyscore(
            self.prefix + "leases", "-inf", f"({num(now)}", start=0, num=limit
        )
        return [text(task_id) for task_id in ids]

    def _count(self) -> int:
        # Every active task is in ``leases`` (by its lease's end, or inf).
        # (Through Any: redis-py 7 annotates the answer as maybe awaitable.)
        count: Any = self._connection.lane.zcard(self.prefix + "leases")
        return int(count)

    def _count_states(self) -> dict[str, int]:
        # One script: the states of the active tasks, read in one step (they
        # are bounded by the middleware's max_pending).
        queued, running = self._run("count_states", [self.prefix + "leases"], [])
        return {"queued": int(queued), "running": int(running)}

    def _block(self, task_id: str, timeout: float, poll: float) -> None:
        listeners.block_until_done(
            self._connection.lane, self.scripts, self.prefix, task_id, timeout, self._block_limit
        )

    # -- bodies --------------------------------------------------------------

    def open_sink(self, task_id: str, kind: BodyKind) -> BodySink:
        return self.bodies.open_sink(task_id, kind)

    def request_body(self, task_id: str, size: int, sha256: str) -> Body:
        return RedisBody(self.bodies, self.bodies.key(task_id, "request"), size, sha256)

    @property
    def stored_bytes(self) -> int:
        """The bytes of the spooled bodies held now."""
        return self.bodies.stored(self.clock())

    def _expire_due(self, now: float) -> None:
        # Redis expires the records and chunks itself; what is left is the
        # ledger of bodies (and their bytes in the budget).
        self.bodies.stored(now)

    def _budget(self) -> int:
        return self.bodies.budget_arg()

    def want_room(self, seconds: float) -> None:
        self.bodies.want_room(seconds)

    @contextmanager
    def _listen(self, task_id: str) -> Iterator[Callable[[float], None]]:
        client = self.client
        if isinstance(client, RedisCluster):
            # (Pub/sub on a cluster client is another API: read again instead.)
            with super()._listen(task_id) as block:
                yield block
            return
        with listeners.listen(
            client, self.scripts, self.prefix, task_id, self._block_limit
        ) as block:
            yield block

    def _list(
        self,
        owner: str | None,
        state: State | None,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[TaskRecord]:
        return tasklist.page(self.scripts, self.prefix, owner, state, before, limit, self.clock())

    def _claim_callbacks(self, now: float, lease: float, limit: int) -> list[Delivery]:
        return deliveries.claim(self.scripts, self.prefix, now, lease, limit)

    def _settle_callback(self, delivery: Delivery, retry_at: float | None) -> bool:
        return deliveries.settle(self.scripts, self.prefix, delivery, retry_at)

    def close(self) -> None:
        self.bodies.close()
        connect.close(self._connection)

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r}>"


def _with_url_settings(in_url: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The store's keywords in ``given`` (the constructor's arguments) with
    the settings a URL carried: a keyword left at its default takes the URL's
    value (a worker that opens the store by that URL reads the same); a
    keyword and a URL that disagree are a ValueError, never one of them
    silently."""
    defaults = inspect.signature(RedisStore.__init__).parameters
    merged = {name: given[name] for name in defaults if name not in _NOT_SETTINGS}
    for name, value in store_keywords("redis", in_url).items():
        if merged[name] == defaults[name].default:
            merged[name] = value
        elif merged[name] != value:
            raise ValueError(f"{name}: {merged[name]!r} as a keyword, {value!r} in the store URL")
    return merged


_NOT_SETTINGS = ("self", "client_or_url", "prefix")


def _changed(store: RedisStore) -> dict[str, Any]:
    """The store's settings that differ from their defaults (those of its
    constructor's signature): what its URL carries to other processes."""
    defaults = inspect.signature(RedisStore.__init__).parameters
    return {
        name: getattr(store, name)
        for name in _CARRIED
        if getattr(store, name) != defaults[name].default
    }
