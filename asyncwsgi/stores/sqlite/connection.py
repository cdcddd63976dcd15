"""The SQLite store's connections: one per thread of each process, in WAL
mode with a busy timeout, reopened after a fork; its tables (the task list's
indexes made on the list's first read); write transactions that take the
lock at once; SQLite's errors as the store's faults."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from ..base import Store, StoreFull, StoreUnavailable
from .schema import LIST_INDEXES, SCHEMA, SCHEME, SQLITE_FULL

__all__ = ["SQLiteConnections"]


class SQLiteConnections(Store):
    """The first layer of :class:`~asyncwsgi.stores.sqlite.SQLiteStore`: the
    database file, its tables and this process's connections to it."""

    shared = True

    def __init__(
        self,
        path: str,
        *,
        max_tombstones: int = 10_000,
        tombstone_ttl: float = 3600.0,
        timeout: float = 30.0,
    ) -> None:
        if not path or path == ":memory:" or path.startswith("file:"):
            raise ValueError("SQLiteStore needs the path of a database file")
        self.path = os.path.abspath(path)
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise ValueError(
                f"SQLiteStore: the directory {directory} of {self.path} does not exist "
                "(the store creates its file, not the directories above it)"
            )
        self.url = SCHEME + self.path
        super().__init__(max_tombstones=max_tombstones, tombstone_ttl=tombstone_ttl)
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # Every connection this store opened in this process: close() closes
        # them from any thread. A thread's own connection is closed when the
        # thread ends (its thread-local holder is collected, see _Holder),
        # not judged by Thread.is_alive(), which is already False for the
        # main thread while its atexit handlers still use the store.
        self._connections: set[sqlite3.Connection] = set()
        # Connections a forked child inherited: never used, never closed there
        # (closing them could release the parent's locks), only kept alive.
        self._inherited: list[sqlite3.Connection] = []
        self._closed = False
        self._list_indexed = False
        self._setup()

    def _conn(self) -> sqlite3.Connection:
        holder: _Holder | None = getattr(self._local, "holder", None)
        pid = os.getpid()
        if holder is not None and holder.pid == pid:
            return holder.conn
        # First use in this thread, or this process is a fork of the one that
        # opened it: a SQLite connection must not cross a fork, so open anew
        # (and leave the parent's alone: closing it here could disturb the
        # parent's locks).
        if self._closed:
            raise RuntimeError("SQLiteStore is closed")
        if self._pid != pid:
            # A forked child: the parent's lock may have been held by a thread
            # that does not exist here, and its connections are not ours.
            self._lock = threading.Lock()
            self._pid = pid
            self._inherited.extend(self._connections)
            self._connections = set()
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,  # only so that close() may close it
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._connections.add(conn)
        holder = _Holder(conn, pid)
        ended = weakref.finalize(
            holder, _thread_ended, conn, pid, self._connections, self._lock, self._inherited
        )
        ended.atexit = False  # at exit, close() (or the process's end) does it
        self._local.holder = holder
        return conn

    def _setup(self) -> None:
        conn = self._conn()
        # Switching to WAL needs a moment alone with the file; several workers
        # starting at once may find it locked for a while.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with self._write() as conn:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
            if "callback" not in columns:  # a file made by an earlier version
                conn.execute("ALTER TABLE tasks ADD COLUMN callback TEXT")

    def _index_list(self) -> None:
        """Create the task list's indexes, on the first read of the list: a
        database whose list is never read never keeps them up. (Once made,
        every process that writes the file keeps them.)"""
        if self._list_indexed:
            return
        with self._write() as conn:
            for statement in LIST_INDEXES.split(";"):
                if statement.strip():
                    conn.execute(statement)
        self._list_indexed = True

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock at once (BEGIN
        IMMEDIATE), so that what it reads stays true until it commits."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself failed (a full disk): a transaction left
            # open would make every later call on this connection fail.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    _backend_errors = (sqlite3.OperationalError,)

    def _fault(self, exc: Exception) -> None:
        # Locked past the busy timeout, an I/O error, a file that cannot be
        # opened or written: the store is unavailable (and full when the disk
        # is). Its message is SQLite's own ("database is locked").
        if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:
            raise StoreFull(f"SQLite {self.path}: {exc}") from exc
        raise StoreUnavailable(f"SQLite {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close every connection this process opened for this store."""
        with self._lock:
            self._closed = True
            mine = list(self._connections) if self._pid == os.getpid() else []
            self._connections.clear()
        for conn in mine:
            conn.close()
        self._local.holder = None


class _Holder:
    """A thread's connection, kept in the store's thread-local storage: when
    the thread ends, Python drops that storage, and the finalizer attached to
    this holder closes the connection."""

    __slots__ = ("conn", "pid", "__weakref__")

    def __init__(self, conn: sqlite3.Connection, pid: int) -> None:
        self.conn = conn
        self.pid = pid


def _thread_ended(
    conn: sqlite3.Connection,
    pid: int,
    connections: set[sqlite3.Connection],
    lock: threading.Lock,
    inherited: list[sqlite3.Connection],
) -> None:
    if os.getpid() != pid:
        inherited.append(conn)
        return
    with lock:
        connections.discard(conn)
    conn.close()
