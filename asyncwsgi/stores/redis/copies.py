"""Local copies of large results: a spooled result replayed once by this
process is kept in a file of its own, so that its next replays (a download
again, a resumed one) go through the server's file wrapper (``sendfile``)
instead of through Python from Redis.

Only with ``local_copies`` above 0, the bytes this process may keep: a store
without it makes no file, no thread and no command for them. Only a result
of more than one chunk is copied (a smaller one is one round trip anyway),
so the number of copies is bounded by the budget too.

A copy is named by its task and used only for the body that the task's
record names (its SHA-256 and size), and that record is read from Redis
before every replay: a task deleted or expired never answers from a copy.
Beyond the budget, the least recently used copies go first. A thread of
the process removes, every :data:`SWEEP_EVERY` seconds, the copies whose
task is gone from Redis (one pipelined read for all of them), so that a
deleted result's bytes leave this machine's disk by themselves too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from ...periodic import Periodic
from ..base import StoreUnavailable
from ..files import process_dir

__all__ = ["SWEEP_EVERY", "CopyWriter", "LocalCopies"]

logger = logging.getLogger("asyncwsgi")

#: How often the copies of tasks gone from Redis are removed.
SWEEP_EVERY = 5.0


@dataclass
class _Copy:
    path: str
    sha256: str
    size: int


class LocalCopies:
    """This process's copies, at most ``budget`` bytes of them (written and
    being written). ``current(ids)`` answers, for each task id, the SHA-256
    of its spooled result as Redis holds it now (None: the task is gone)."""

    def __init__(self, budget: int, current: Callable[[list[str]], list[str | None]]) -> None:
        self.budget = budget
        self._current = current
        self._lock = threading.Lock()
        self._copies: OrderedDict[str, _Copy] = OrderedDict()  # least recently used first
        self._writing: dict[str, int] = {}  # task id: bytes reserved
        self._held = 0  # bytes of both
        self._dir: str | None = None
        self._dir_lock = -1
        self._pid = os.getpid()
        self._closed = False
        self._warned = False  # the directory could not be made: said once
        self._sweeper = Periodic(
            "asyncwsgi-copies",
            self.sweep,
            SWEEP_EVERY,
            what="removing local copies of removed results",
            outage=(StoreUnavailable,),
        )

    def open(self, task_id: str, sha256: str, size: int) -> IO[bytes] | None:
        """The copy of this body, opened at offset 0, or None."""
        with self._lock:
            self._after_fork()
            copy = self._copies.get(task_id)
            if copy is None:
                return None
            if (copy.sha256, copy.size) != (sha256, size):
                self._remove(task_id)  # not this body (never expected: ids are not reused)
                return None
            self._copies.move_to_end(task_id)
            try:
                return open(copy.path, "rb")  # noqa: SIM115 (the caller closes it)
            except FileNotFoundError:
                self._remove(task_id)  # someone removed the file: copy it again
                return None

    def writer(self, task_id: str, sha256: str, size: int) -> CopyWriter | None:
        """A writer for a new copy of this body, its bytes taken from the
        budget (the least recently used copies removed for room); None when
        it does not fit, or another replay is writing it."""
        with self._lock:
            self._after_fork()
            if self._closed or size > self.budget:
                return None
            if task_id in self._writing or task_id in self._copies:
                return None
            while self._held + size > self.budget and self._copies:
                self._remove(next(iter(self._copies)))
            if self._held + size > self.budget:
                return None  # the rest is being written
            try:
                path = os.path.join(self._directory(), f"{task_id}.copy")
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    logger.warning("asyncwsgi: cannot keep local copies of results: %s", exc)
                return None
            self._writing[task_id] = size
            self._held += size
        return CopyWriter(self, task_id, sha256, size, path)

    def forget(self, task_id: str) -> None:
        """The task was deleted: its copy goes now."""
        with self._lock:
            if task_id in self._copies:
                self._remove(task_id)
            reserved = self._writing.pop(task_id, None)
            if reserved is not None:
                self._held -= reserved  # its writer will not commit it

    def sweep(self) -> None:
        """Remove the copies whose task is gone from Redis (or whose result is
        not the one copied)."""
        with self._lock:
            self._after_fork()
            held = [(task_id, copy.sha256) for task_id, copy in self._copies.items()]
        if not held:
            return
        answers = self._current([task_id for task_id, _ in held])
        with self._lock:
            for (task_id, sha256), now in zip(held, answers, strict=True):
                copy = self._copies.get(task_id)
                if now != sha256 and copy is not None and copy.sha256 == sha256:
                    self._remove(task_id)

    def close(self) -> None:
        """Stop the sweeper and remove every copy."""
        self._sweeper.stop(5)
        with self._lock:
            self._closed = True
            if self._dir is not None and self._pid == os.getpid():
                shutil.rmtree(self._dir, ignore_errors=True)
                os.close(self._dir_lock)
            self._forget_all()

    # -- the writer's side ---------------------------------------------------

    def _committed(self, writer: CopyWriter) -> bool:
        with self._lock:
            if self._writing.pop(writer.task_id, None) is None:
                return False  # closed, or forked, meanwhile
            self._copies[writer.task_id] = _Copy(writer.path, writer.sha256, writer.size)
        self._sweeper.start()
        return True

    def _abandoned(self, writer: CopyWriter) -> None:
        with self._lock:
            reserved = self._writing.pop(writer.task_id, None)
            if reserved is not None:
                self._held -= reserved

    # -- under the lock ------------------------------------------------------

    def _remove(self, task_id: str) -> None:
        copy = self._copies.pop(task_id)
        self._held -= copy.size
        # A replay that has the file open goes on sending it: unlinking an
        # open file leaves its bytes to the reader.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(copy.path)

    def _directory(self) -> str:
        if self._dir is None:
            self._dir, self._dir_lock = process_dir(None)
        return self._dir

    def _after_fork(self) -> None:
        # A child forked from a process that held copies starts with none:
        # the directory and its lock are the parent's.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._forget_all()

    def _forget_all(self) -> None:
        # (Not the files: they are removed by whoever owns the directory.)
        self._copies.clear()
        self._writing.clear()
        self._held = 0
        self._dir, self._dir_lock = None, -1


class CopyWriter:
    """Writes one copy as its body is replayed from Redis. The copy is kept
    once its last byte is written (before that byte is sent on: a client
    that waits for the end finds the copy there), :meth:`abandon` drops it
    otherwise (a client that went away, a full disk). The file takes its
    final name only once it is whole."""

    def __init__(
        self, copies: LocalCopies, task_id: str, sha256: str, size: int, path: str
    ) -> None:
        self.copies = copies
        self.task_id, self.sha256, self.size, self.path = task_id, sha256, size, path
        self._part = f"{path}.part"
        self._file: IO[bytes] | None = None
        self._done = False
        self.written = 0

    def write(self, data: bytes) -> None:
        """Append ``data``. A write that fails (a full disk) abandons the
        copy, said once in the log; the replay goes on from Redis."""
        if self._done:
            return
        try:
            if self._file is None:
                self._file = open(self._part, "wb")  # noqa: SIM115 (closed by commit or abandon)
            self._file.write(data)
        except OSError as exc:
            self._failed(exc)
            return
        self.written += len(data)
        if self.written >= self.size:
            self._commit()

    def _commit(self) -> None:
        file, self._file = self._file, None
        try:
            if file is None or self.written != self.size:
                raise OSError(f"{self.written} bytes copied of {self.size}")
            file.close()
            os.replace(self._part, self.path)
        except OSError as exc:
            if file is not None:
                with contextlib.suppress(OSError):
                    file.close()
            self._failed(exc)
            return
        self._done = True
        if not self.copies._committed(self):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def abandon(self) -> None:
        """The copy is not kept: its file goes, its bytes back to the budget."""
        if self._done:
            return
        self._done = True
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._part)
        self.copies._abandoned(self)

    def _failed(self, exc: OSError) -> None:
        logger.warning("asyncwsgi: a local copy of task %s was not kept: %s", self.task_id, exc)
        self.abandon()
