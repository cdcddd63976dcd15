"""Spooled bodies in Redis: ``body:<id>:<kind>`` is a list of chunks of
``chunk_size`` bytes, counted against the store's byte budget as they are
written. :class:`BodyIO` is every call the bodies make; :class:`RedisSink`
writes one, :class:`RedisBody` reads one."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Generator, Iterator
from typing import IO, Any, cast

import redis
from redis.cluster import RedisCluster

from ...task import Body, BodyKind, BodySink, read_range
from ..base import BodyRemoved, StoreFull
from ..budget import BudgetSpent
from .codec import num, text
from .copies import LocalCopies
from .faults import translated
from .readahead import read_ahead
from .scripts import Scripts

__all__ = ["BodyIO", "RedisBody", "RedisSink", "budget_spent"]

# The bytes of one round trip of a read ahead: one chunk of the default
# 1 MiB. (Several chunks per LRANGE cost redis-py's pure-Python parser more
# copying per byte than they save in round trips: measured slower, beside
# the same read ahead one chunk at a time, with the thread overlapping the
# fetch of the next chunk with the sending of the last.)
_READ_AHEAD = 2**20


def budget_spent(limit: int | None) -> StoreFull:
    return BudgetSpent(limit)


class BodyIO:
    """The store's handle for its bodies: the scripts that count bytes, and
    the reads of chunks, each inside the store's fault mapping. ``client``
    gives the client (made when first needed), ``budget`` the store's ``max_stored_bytes``
    (which the middleware may set after the store is made), ``clock`` the
    store's clock."""

    def __init__(
        self,
        client: Callable[[], redis.Redis | RedisCluster],
        scripts: Scripts,
        prefix: str,
        *,
        chunk_size: int,
        spool_ttl: float,
        budget: Callable[[], int | None],
        clock: Callable[[], float],
        local_copies: int = 0,
    ) -> None:
        self.client = client
        self.scripts = scripts
        self.prefix = prefix
        self.chunk_size = chunk_size
        self.spool_ttl = spool_ttl
        self.budget = budget
        self.clock = clock  # the store's (Store.clock)
        # Local copies of replayed results (``local_copies``), or None.
        self.copies = LocalCopies(local_copies, self._digests) if local_copies > 0 else None
        # The tasks of this process with a spooled request body that their
        # create has not taken yet (it says so in the record, so that only
        # they pay for removing one at their finish).
        self._requests: set[str] = set()
        self._lock = threading.Lock()

    def opened_request(self, task_id: str) -> None:
        with self._lock:
            self._requests.add(task_id)

    def has_request(self, task_id: str) -> bool:
        """Whether ``task_id`` has a spooled request body that no create has
        bound to its task yet."""
        with self._lock:
            return task_id in self._requests

    def forget_request(self, task_id: str) -> None:
        """The body is bound to its task (or discarded): nothing to remember."""
        with self._lock:
            self._requests.discard(task_id)

    def key(self, task_id: str, kind: BodyKind) -> str:
        return f"{self.prefix}body:{task_id}:{kind}"

    def budget_arg(self) -> int:
        """The byte budget as the scripts take it (-1: none)."""
        limit = self.budget()
        return -1 if limit is None else int(limit)

    def spooled_result(self, task_id: str, fields: dict[str, Any]) -> RedisBody:
        """The spooled result of a task whose record has these fields."""
        size, sha256 = int(fields["body_size"]), text(fields["body_sha256"])
        return RedisBody(self, self.key(task_id, "result"), size, sha256, task_id)

    def open_sink(self, task_id: str, kind: BodyKind) -> RedisSink:
        """A sink for a new body; :class:`StoreFull` when the budget is spent."""
        limit = self.budget()
        if limit is not None and self.stored(self.clock()) >= limit:
            raise budget_spent(limit)
        return RedisSink(self, task_id, kind)

    def stored(self, now: float) -> int:
        """The bytes of the spooled bodies held at ``now``, once those past
        their time (a batch of them) are removed."""
        with translated():
            held = self.scripts.run("stored_bytes", [self.prefix + "stored"], [num(now)])
        return int(held)

    def want_room(self, seconds: float) -> None:
        """A writer waits for room: new tasks are refused for ``seconds``
        (0: no longer). Nothing to do without a budget."""
        if self.budget() is None:
            return
        millis = max(1, round(seconds * 1000)) if seconds else 0
        with translated():
            self.scripts.run("want_room", [self.prefix + "room_wanted"], [millis])

    def reserve(self, task_id: str, kind: BodyKind, nbytes: int) -> bool:
        """Count ``nbytes`` against the budget ahead of writing them; False
        when they are not free."""
        with translated():
            taken = self.scripts.run(
                "reserve_bytes",
                [self.key(task_id, kind)],
                [
                    f"{task_id}:{kind}",
                    num(self.clock()),
                    num(self.spool_ttl),
                    self.budget_arg(),
                    nbytes,
                ],
            )
        return bool(int(taken))

    def append(self, task_id: str, kind: BodyKind, index: int, chunk: bytes, extra: int) -> int:
        """Append chunk number ``index``, ``extra`` of its bytes not reserved
        yet: 1, 0 (the budget is spent) or -1 (the body was removed)."""
        with translated():
            return int(
                self.scripts.run(
                    "append_chunk",
                    [self.key(task_id, kind)],
                    [
                        f"{task_id}:{kind}",
                        num(self.clock()),
                        num(self.spool_ttl),
                        self.budget_arg(),
                        index,
                        chunk,
                        extra,
                    ],
                )
            )

    def release(self, task_id: str, kind: BodyKind, nbytes: int) -> None:
        """Give back ``nbytes`` reserved and not written."""
        with translated():
            self.scripts.run(
                "release_bytes", [self.key(task_id, kind)], [f"{task_id}:{kind}", nbytes]
            )

    def drop(self, task_id: str, kind: BodyKind) -> None:
        """Remove a body and give its bytes back."""
        with translated():
            self.scripts.run("drop_body", [self.key(task_id, kind)], [task_id, kind])

    def deleted(self, task_id: str) -> None:
        """The task was deleted: a local copy of its result goes now."""
        if self.copies is not None:
            self.copies.forget(task_id)

    def close(self) -> None:
        if self.copies is not None:
            self.copies.close()

    def _digests(self, task_ids: list[str]) -> list[str | None]:
        """The SHA-256 of each task's spooled result as Redis holds it now
        (None: no such task, or no spooled result), in one round trip."""
        with translated():
            pipe = self.client().pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hget(f"{self.prefix}task:{task_id}", "body_sha256")
            answers = pipe.execute()
        return [None if value is None else text(value) for value in answers]

    def exists(self, key: str) -> bool:
        with translated():
            return bool(self.client().exists(key))

    def fetch(self, key: str, first: int, last: int) -> list[bytes]:
        """Chunks ``first`` to ``last`` (inclusive) of the body at ``key``, in
        one round trip."""
        with translated():
            chunks = cast("list[bytes]", self.client().lrange(key, first, last))
        if len(chunks) != last - first + 1:
            raise OSError(f"the body at {key} was removed while it was read")
        return chunks

    def chunk(self, key: str, index: int) -> bytes:
        """Chunk number ``index`` of the body at ``key``."""
        with translated():
            chunk = self.client().lindex(key, index)
        if chunk is None:
            raise OSError(f"the body at {key} was removed while it was read")
        return cast(bytes, chunk)


class RedisSink(BodySink):
    """Writes a body to ``body:<id>:<kind>`` in chunks of ``chunk_size``: one
    script call per chunk, which counts it against the budget."""

    def __init__(self, io_: BodyIO, task_id: str, kind: BodyKind) -> None:
        self.io = io_
        self.task_id = task_id
        self.kind = kind
        self.key = io_.key(task_id, kind)
        self.chunks = 0
        self.pushed = 0
        # Bytes counted against the budget: reserved ahead, or pushed past that.
        self.counted = 0
        self._buffer = bytearray()
        if kind == "request":
            io_.opened_request(task_id)

    def reserve(self, nbytes: int) -> None:
        if not self.io.reserve(self.task_id, self.kind, nbytes):
            raise budget_spent(self.io.budget())
        self.counted += nbytes

    def write(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        size = self.io.chunk_size
        while len(buffer) >= size:
            self._push(bytes(buffer[:size]))
            del buffer[:size]

    def _push(self, chunk: bytes) -> None:
        extra = max(0, self.pushed + len(chunk) - self.counted)
        answer = self.io.append(self.task_id, self.kind, self.chunks, chunk, extra)
        if answer == 0:
            raise budget_spent(self.io.budget())
        if answer < 0:
            raise BodyRemoved()
        self.chunks += 1
        self.pushed += len(chunk)
        self.counted += extra

    def commit(self, size: int, sha256: str) -> Body:
        if self._buffer:
            self._push(bytes(self._buffer))
            self._buffer = bytearray()
        unused = self.counted - self.pushed
        if unused > 0:
            self.io.release(self.task_id, self.kind, unused)
            self.counted = self.pushed
        return RedisBody(self.io, self.key, size, sha256)

    def discard(self) -> None:
        self._buffer = bytearray()
        if self.kind == "request":
            self.io.forget_request(self.task_id)  # no task is made with it
        self.io.drop(self.task_id, self.kind)


class RedisBody(Body):
    """A body in chunks in Redis, read a chunk at a time. A task's result
    (``task_id`` given) of more than one chunk is read from this process's
    local copy when the store keeps them and has one, and copied as it is
    replayed in full when it has none."""

    __slots__ = ("io", "key", "task_id")

    def __init__(
        self, io_: BodyIO, key: str, size: int, sha256: str, task_id: str | None = None
    ) -> None:
        super().__init__(size, sha256)
        self.io = io_
        self.key = key
        self.task_id = task_id

    def _copies(self) -> tuple[LocalCopies, str] | None:
        """This process's copies and the task's id, when this body may have one."""
        copies, task_id = self.io.copies, self.task_id
        if copies is None or task_id is None or self.size <= self.io.chunk_size:
            return None
        return copies, task_id

    def open(self) -> IO[bytes]:
        mine = self._copies()
        if mine is not None:
            copies, task_id = mine
            copy = copies.open(task_id, self.sha256, self.size)
            if copy is not None:
                return copy  # a file: the server may send it with sendfile
        if not self.io.exists(self.key):
            raise FileNotFoundError(f"no body at {self.key}")
        return io.BufferedReader(_ChunkReader(self), buffer_size=256 * 1024)

    def chunks(self, start: int, stop: int) -> Iterator[bytes]:
        # Redis's own chunks, sliced only at the ends of the range, read
        # ahead of the caller (the server writing them to the client).
        if stop <= start:
            return
        mine = self._copies()
        writer = None
        if mine is not None:
            copies, task_id = mine
            copy = copies.open(task_id, self.sha256, self.size)
            if copy is not None:
                with copy:
                    yield from read_range(copy, start, stop)
                return
            if (start, stop) == (0, self.size):
                writer = copies.writer(task_id, self.sha256, self.size)
        if writer is None:
            yield from self._from_redis(start, stop)
            return
        pieces = self._from_redis(start, stop)
        try:
            for piece in pieces:
                writer.write(piece)  # kept with its last byte
                yield piece
        finally:
            pieces.close()  # a reader that stopped early stops the read ahead
            writer.abandon()  # (nothing once kept)

    def _from_redis(self, start: int, stop: int) -> Generator[bytes, None, None]:
        size = self.io.chunk_size
        first, last = start // size, (stop - 1) // size
        position = first * size
        key = self.key
        batch = max(1, _READ_AHEAD // size)
        for piece in read_ahead(lambda a, b: self.io.fetch(key, a, b), first, last, batch):
            end = position + len(piece)
            if position < start or end > stop:
                piece = piece[max(0, start - position) : stop - position]
            yield piece
            position = end


class _ChunkReader(io.RawIOBase):
    def __init__(self, body: RedisBody) -> None:
        self.body = body
        self.chunk_size = body.io.chunk_size
        self.position = 0
        self._index = -1
        self._chunk = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.position
        elif whence == io.SEEK_END:
            offset += self.body.size
        self.position = max(0, offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.body.size:
            return 0
        index, offset = divmod(self.position, self.chunk_size)
        if index != self._index:
            self._chunk = self.body.io.chunk(self.body.key, index)
            self._index = index
        piece = self._chunk[offset : offset + len(buffer)]
        buffer[: len(piece)] = piece
        self.position += len(piece)
        return len(piece)
