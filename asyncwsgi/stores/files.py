"""Bodies kept as files in a results directory (the memory and SQLite stores).

A body lives in ``<directory>/<task id>.<kind>`` (``kind`` is ``request`` or
``result``). Its writer holds an exclusive ``flock`` on it while writing, so a
sweep (run when a store opens: after a crash) removes only files that no
writer holds and no record refers to; a file being written by another live
process is never taken from under it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import IO

from ..task import Body, BodyKind, BodySink
from .base import BodyRemoved, StoreFull

__all__ = ["FileBody", "FileSink", "ResultsDir", "process_dir"]

_KINDS: tuple[BodyKind, ...] = ("request", "result")


class FileBody(Body):
    """A body in a file of a results directory."""

    __slots__ = ("path",)

    def __init__(self, path: str, size: int, sha256: str) -> None:
        super().__init__(size, sha256)
        self.path = path

    def open(self) -> IO[bytes]:
        return open(self.path, "rb")  # noqa: SIM115 (the caller closes it)


class FileSink(BodySink):
    """Writes one body file, locked until :meth:`close`.

    Bytes are taken from the store's budget (``reserve``, which may raise
    ``StoreFull``) ``grant`` bytes at a time ahead of the writes, and what was
    not used is given back (``release``) at the commit. A ``durable`` sink
    (a store that outlives the process) is on disk before :meth:`commit`
    returns, so that a record that names the body never outlives its bytes.
    """

    def __init__(
        self,
        path: str,
        *,
        reserve: Callable[[int], None],
        release: Callable[[int], None],
        grant: int = 2**20,
        durable: bool = False,
    ) -> None:
        self.path = path
        self.durable = durable
        self._reserve = reserve
        self._release = release
        self.grant = grant
        self.reserved = 0
        self.written = 0
        self._file: IO[bytes] | None = _open_locked(path)

    def write(self, data: bytes) -> None:
        file = self._file
        if file is None:
            raise ValueError("write to a closed body sink")
        # Unlinked: the task was deleted, timed out or judged lost, and its
        # reservation given back. A write now would be outside the budget.
        if not os.fstat(file.fileno()).st_nlink:
            raise BodyRemoved()
        need = self.written + len(data) - self.reserved
        if need > 0:
            grant = max(need, self.grant)
            try:
                self._reserve(grant)
            except StoreFull:
                if grant == need:
                    raise
                grant = need  # the budget's last bytes: no more than needed
                self._reserve(grant)
            self.reserved += grant
        file.write(data)
        self.written += len(data)

    def reserve(self, nbytes: int) -> None:
        self._reserve(nbytes)
        self.reserved += nbytes

    def commit(self, size: int, sha256: str) -> Body:
        if self._file is not None:
            self._file.flush()
            if self.durable:
                os.fsync(self._file.fileno())
                # The file's name too: its directory entry is what the record finds.
                directory = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        unused = self.reserved - self.written
        if unused > 0:
            self._release(unused)
            self.reserved = self.written
        return FileBody(self.path, size, sha256)

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()  # a full disk may fail the last flush: the data is committed

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.close()
        if self.reserved:
            reserved, self.reserved = self.reserved, 0
            self._release(reserved)


def _open_locked(path: str) -> IO[bytes]:
    for _ in range(3):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FileExistsError(errno.EEXIST, "a body is being written", path) from None
        if os.fstat(fd).st_nlink:
            return os.fdopen(fd, "wb")
        # A sweep removed the file between the open and the lock: start again.
        os.close(fd)
    raise OSError(errno.EAGAIN, "could not create a body file", path)


class ResultsDir:
    """The files of one store's bodies."""

    def __init__(self, path: str, *, durable: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.durable = durable
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def file(self, task_id: str, kind: BodyKind) -> str:
        return os.path.join(self.path, f"{task_id}.{kind}")

    def sink(
        self,
        task_id: str,
        kind: BodyKind,
        *,
        reserve: Callable[[int], None],
        release: Callable[[int], None],
    ) -> FileSink:
        return FileSink(
            self.file(task_id, kind), reserve=reserve, release=release, durable=self.durable
        )

    def remove(self, task_id: str, *kinds: BodyKind) -> None:
        for kind in kinds or _KINDS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.file(task_id, kind))

    def sweep(self, referenced: Callable[[str, BodyKind], bool]) -> int:
        """Remove the files no writer holds and ``referenced`` does not claim;
        the number removed."""
        removed = 0
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return 0
        for name in names:
            task_id, _, kind = name.rpartition(".")
            if kind not in _KINDS or not task_id:
                continue
            path = os.path.join(self.path, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # being written by a live process
            try:
                if not referenced(task_id, kind):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    removed += 1
            finally:
                os.close(fd)
        return removed


def process_dir(parent: str | None) -> tuple[str, int]:
    """A new directory of this process's own under ``parent`` (by default one
    in the temporary directory), held by a lock for as long as the process
    lives, and the lock's descriptor. Directories under ``parent`` whose
    process is gone (no lock held: it crashed or exited without closing its
    store) are removed first."""
    if parent is None:
        parent = os.path.join(tempfile.gettempdir(), f"asyncwsgi-results-{os.getuid()}")
    os.makedirs(parent, mode=0o700, exist_ok=True)
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        lock = os.path.join(path, ".lock")
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # being made (its lock comes next) or not ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
    while True:
        path = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent)
        fd = os.open(os.path.join(path, ".lock"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return path, fd
        os.close(fd)  # another process's sweep took it before the lock: again
