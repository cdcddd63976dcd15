"""A shared store in one SQLite file: several processes (and threads) on one machine.

>>> app = AsyncMiddleware(app, paths=["/reports/*"], store="sqlite:///tasks.db")

Every gunicorn worker opens the same file, so a status URL answers the same
from whichever worker the poll lands on. Bodies above the middleware's
``spool_threshold`` (results, request bodies) are files in ``results_dir``
(``<database>-results`` beside it by default), listed in the ``bodies``
table with their sizes: removed with their task, bounded by
``max_stored_bytes``, and swept when a store opens (what a crash left: files
no live writer holds and no row claims). The database runs in WAL mode (readers
never block the one writer) with a busy timeout; each thread of each process
has its own connection, and a process that was forked reopens its own rather
than use the parent's.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..task import (
    Body,
    BodyKind,
    BodySink,
    Callback,
    Created,
    Delivery,
    KeyEntry,
    Progress,
    Result,
    State,
    TaskRecord,
)
from .base import Store, StoreFull, StoreUnavailable
from .files import FileBody, ResultsDir

__all__ = ["SQLiteStore"]

_SCHEME = "sqlite:///"

# Expired tasks are moved to the tombstones in batches of this many, on the
# calls that touch the table: never a sweep of the whole table at once.
_EXPIRE_BATCH = 100
# SQLite's result codes (in sqlite3 from Python 3.11; typeshed does not list them).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_FULL = 13
# Ids per statement in heartbeat() (SQLite bounds the number of parameters).
_ID_CHUNK = 500
# UPDATE ... RETURNING (SQLite 3.35): finishing a task tells whether it asked
# for a completion callback, so a task without one costs no statement for it.
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    progress TEXT,
    status TEXT,
    headers TEXT,
    body BLOB,
    owner TEXT,
    lease_until REAL,
    ttl REAL NOT NULL,
    expires_at REAL,
    callback TEXT
);
CREATE INDEX IF NOT EXISTS tasks_expires_at ON tasks (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_active ON tasks (state)
    WHERE state IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS callbacks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    status_url TEXT NOT NULL,
    status INTEGER NOT NULL,
    finished REAL NOT NULL,
    attempts INTEGER NOT NULL,
    deadline REAL NOT NULL,
    due REAL NOT NULL,
    claim TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS callbacks_due ON callbacks (due);
CREATE TABLE IF NOT EXISTS tombstones (
    id TEXT PRIMARY KEY,
    owner TEXT,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_expires_at ON tombstones (expires_at);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    fingerprint TEXT
);
CREATE INDEX IF NOT EXISTS keys_task_id ON keys (task_id);
CREATE TABLE IF NOT EXISTS bodies (
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT,
    PRIMARY KEY (task_id, kind)
);
CREATE TABLE IF NOT EXISTS room_wanted (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    until REAL NOT NULL
);
"""

# The lease rule (stores/base.py: lapsed) in SQL, with the time as parameter.
_ACTIVE = "state IN ('queued', 'running')"
_LAPSED = _ACTIVE + " AND lease_until < ?"

# The task list's order: indexes that match its WHERE and ORDER BY exactly, so
# that a page reads only its own rows.
_LIST_INDEXES = """
CREATE INDEX IF NOT EXISTS tasks_list ON tasks (owner, created, id);
CREATE INDEX IF NOT EXISTS tasks_list_state ON tasks (owner, state, created, id);
"""

_COLUMNS = (
    "id, state, created, started, finished, progress, status, headers, body, owner,"
    " lease_until, ttl, expires_at, callback"
)


class SQLiteStore(Store):
    """Tasks in an SQLite database file, shared by every process that opens it.

    Semantics are those of :class:`~asyncwsgi.stores.memory.MemoryStore`: results are
    kept ``ttl`` seconds after they finish, then leave a tombstone (410 Gone)
    for ``tombstone_ttl`` seconds, at most ``max_tombstones`` of them.
    ``timeout`` is how long a call waits for another process's write lock.

    The file must be on a local disk: SQLite's locks are not reliable over
    network filesystems. For several machines use a Redis store.
    """

    shared = True

    def __init__(
        self,
        path: str,
        *,
        max_tombstones: int = 10_000,
        tombstone_ttl: float = 3600.0,
        timeout: float = 30.0,
        results_dir: str | None = None,
        max_stored_bytes: int | None = None,
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
        self.url = _SCHEME + self.path
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
        self.results_dir = os.path.abspath(results_dir or self.path + "-results")
        self.max_stored_bytes = max_stored_bytes
        self._files = ResultsDir(self.results_dir, durable=True)
        self._list_indexed = False
        self._setup()
        with self._translated():
            self.sweep()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteStore:
        """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
        if not url.startswith(_SCHEME):
            raise ValueError(
                f"not an SQLite store URL: {url!r} (use sqlite:///relative.db "
                "or sqlite:////absolute/path.db)"
            )
        path = url[len(_SCHEME) :]
        if not path:
            raise ValueError(f"an SQLite store URL needs a file path: {url!r}")
        return cls(path, **options)

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.url}>"

    # -- connections -------------------------------------------------------

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
            for statement in _SCHEMA.split(";"):
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
            for statement in _LIST_INDEXES.split(";"):
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
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
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

    # -- the primitives ------------------------------------------------------

    def _insert(
        self,
        record: TaskRecord,
        key: str | None,
        fingerprint: str | None,
        limit: int | None,
        room: int,
    ) -> Created:
        now = time.time()
        with self._write() as conn:
            self._expire(conn, now)
            if key is not None:
                row = conn.execute(
                    "SELECT k.task_id, k.fingerprint FROM keys AS k JOIN tasks AS t"
                    " ON t.id = k.task_id WHERE k.key = ? AND (t.expires_at IS NULL"
                    " OR t.expires_at > ?)",
                    (key, now),
                ).fetchone()
                if row is not None:
                    return Created(False, KeyEntry(row[0], row[1]))
            if limit is not None and self._count_in(conn) >= limit:
                return Created(False)
            self._check_budget(conn, room, now)
            result = record.result
            conn.execute(
                f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.state,
                    record.created,
                    record.started,
                    record.finished,
                    None if record.progress is None else json.dumps(record.progress),
                    None if result is None else result.status,
                    None if result is None else json.dumps(result.headers),
                    None if result is None else _inline(result),
                    record.owner,
                    record.lease_until,
                    record.ttl,
                    None,
                    None
                    if record.callback is None
                    else json.dumps([record.callback.url, record.callback.status_url]),
                ),
            )
            conn.execute("DELETE FROM tombstones WHERE id = ?", (record.id,))
            if key is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO keys (key, task_id, fingerprint) VALUES (?, ?, ?)",
                    (key, record.id, fingerprint),
                )
            return Created(True)

    def _read(self, task_id: str) -> TaskRecord | None:
        now = time.time()
        conn = self._conn()
        if self._expiry_due(conn, now):
            self._tidy(conn, now, task_id)
        row = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is not None:
            record = _record(row)
            expires_at = row[12]  # the expires_at column
            if expires_at is not None and expires_at <= now:  # not tidied up yet
                return self._tombstone(task_id, record.owner)
            if record.result is not None and row[8] is None:
                spooled = conn.execute(
                    "SELECT bytes, sha256 FROM bodies WHERE task_id = ? AND kind = 'result'",
                    (task_id,),
                ).fetchone()
                if spooled is None or spooled[1] is None:
                    return None  # removed between the two reads
                path = self._files.file(task_id, "result")
                record.result.body = FileBody(path, spooled[0], spooled[1])
            return record
        tomb = conn.execute(
            "SELECT owner FROM tombstones WHERE id = ? AND expires_at > ?", (task_id, now)
        ).fetchone()
        return None if tomb is None else self._tombstone(task_id, tomb[0])

    def _tidy(self, conn: sqlite3.Connection, now: float, task_id: str) -> None:
        """Expire what is due, on a read: only if the write lock is free now.
        A poll must not wait (and fail after the busy timeout) because another
        process is writing; the next call tidies up."""
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            with self._write() as writing:
                self._expire(writing, now, task_id)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (_SQLITE_BUSY, _SQLITE_LOCKED):
                raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")

    def _start(self, task_id: str, now: float, lease_until: float) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE tasks SET state = 'running', started = ?, lease_until = ? "
                "WHERE id = ? AND state = 'queued'",
                (now, lease_until, task_id),
            )
            return cursor.rowcount == 1

    def _heartbeat(self, task_ids: list[str], lease_until: float) -> None:
        with self._write() as conn:
            for i in range(0, len(task_ids), _ID_CHUNK):
                chunk = task_ids[i : i + _ID_CHUNK]
                marks = ", ".join("?" * len(chunk))
                conn.execute(
                    f"UPDATE tasks SET lease_until = ? WHERE {_ACTIVE} AND id IN ({marks})",
                    (lease_until, *chunk),
                )

    def _set_progress(self, task_id: str, progress: Progress) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE tasks SET progress = ? WHERE id = ? AND state = 'running'",
                (json.dumps(progress), task_id),
            )

    def _finish(
        self, task_id: str, result: Result, now: float, *, lapsed_before: float | None
    ) -> bool:
        # One conditional UPDATE: only a queued or running task is finished,
        # so a finished result is never overwritten (a late finish after the
        # lease was judged lost, or a lost verdict after a real finish).
        query = (
            "UPDATE tasks SET state = 'done', finished = ?, status = ?, headers = ?, body = ?,"
            " lease_until = NULL, expires_at = ? + ttl WHERE id = ? AND "
        )
        params: tuple[Any, ...] = (
            now,
            result.status,
            json.dumps(result.headers),
            _inline(result),
            now,
            task_id,
        )
        if lapsed_before is None:
            query += _ACTIVE
        else:
            query += _LAPSED
            params += (lapsed_before,)
        body = result.body
        if _RETURNING:
            query += " RETURNING callback IS NOT NULL"
        with self._write() as conn:
            cursor = conn.execute(query, params)
            if _RETURNING:
                rows = cursor.fetchall()  # to the end: the statement completes
                if not rows:
                    return False
                has_callback = bool(rows[0][0])
            elif cursor.rowcount != 1:
                return False
            else:
                has_callback = True  # cannot tell: the INSERT below looks
            gone: list[BodyKind] = ["request"]
            if isinstance(body, bytes):
                gone.append("result")  # a lost verdict: a writer's file goes
            else:
                conn.execute(
                    "UPDATE bodies SET bytes = ?, sha256 = ? WHERE task_id = ? AND kind = 'result'",
                    (body.size, body.sha256, task_id),
                )
            self._forget_bodies(conn, [task_id], gone)
            # Its completion callback, due at once, in the same transaction
            # (only for a task that asked for one, where the UPDATE says so).
            if has_callback:
                conn.execute(
                    "INSERT OR REPLACE INTO callbacks (id, url, status_url, status, finished,"
                    " attempts, deadline, due, claim) SELECT id, json_extract(callback, '$[0]'),"
                    " json_extract(callback, '$[1]'), ?, finished, 0, finished + ttl, finished, ''"
                    " FROM tasks WHERE id = ? AND callback IS NOT NULL",
                    (result.code, task_id),
                )
        self._files.remove(task_id, *gone)
        return True

    def _delete(self, task_id: str) -> bool:
        with self._write() as conn:
            if conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount == 0:
                return False
            conn.execute("DELETE FROM keys WHERE task_id = ?", (task_id,))
            self._forget_bodies(conn, [task_id])
        self._files.remove(task_id)
        return True

    def _lapsed(self, now: float, limit: int) -> list[str]:
        rows = (
            self._conn()
            .execute(
                f"SELECT id FROM tasks WHERE {_LAPSED} LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )
        return [row[0] for row in rows]

    def _count(self) -> int:
        return self._count_in(self._conn())

    def _count_states(self) -> dict[str, int]:
        counts = {"queued": 0, "running": 0}
        rows = self._conn().execute(
            "SELECT state, COUNT(*) FROM tasks WHERE state IN ('queued', 'running') GROUP BY state"
        )
        for state, count in rows:
            counts[state] = int(count)
        return counts

    # SQLite cannot tell another process that a row changed (no LISTEN/NOTIFY,
    # and update hooks see only this connection's writes): the base's polling
    # wait, one indexed read each time, is what it has.

    def _list(
        self,
        owner: str | None,
        state: State | None,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[TaskRecord]:
        self._index_list()
        now = time.time()
        conn = self._conn()
        if self._expiry_due(conn, now):
            with self._write() as conn:
                self._expire(conn, now)
        # Every column but the result's body (x'': empty): a page never loads bodies.
        columns = _COLUMNS.replace(" body,", " x'',")
        query = f"SELECT {columns} FROM tasks WHERE owner IS ?"
        params: list[Any] = [owner]
        if state is not None:
            query += " AND state = ?"
            params.append(state)
        if before is not None:
            query += " AND (created, id) < (?, ?)"
            params += before
        query += " ORDER BY created DESC, id DESC LIMIT ?"
        params.append(limit)
        return [_record(row) for row in conn.execute(query, params)]

    def _claim_callbacks(self, now: float, lease: float, limit: int) -> list[Delivery]:
        claim = secrets.token_hex(8)
        # A read first: every process asks several times a second, and most
        # often nothing is due; the write lock is taken only when something is.
        due = self._conn().execute("SELECT 1 FROM callbacks WHERE due <= ? LIMIT 1", (now,))
        if due.fetchone() is None:
            return []
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id, url, status_url, status, finished, attempts, deadline"
                " FROM callbacks WHERE due <= ? ORDER BY due LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE callbacks SET due = ?, claim = ? WHERE id = ?",
                [(now + lease, claim, row[0]) for row in rows],
            )
        return [
            Delivery(row[0], row[1], row[2], int(row[3]), row[4], int(row[5]), row[6], claim)
            for row in rows
        ]

    def _settle_callback(self, delivery: Delivery, retry_at: float | None) -> bool:
        with self._write() as conn:
            if retry_at is None:
                cursor = conn.execute(
                    "DELETE FROM callbacks WHERE id = ? AND claim = ?",
                    (delivery.task_id, delivery.claim),
                )
            else:
                cursor = conn.execute(
                    "UPDATE callbacks SET due = ?, attempts = attempts + 1, claim = ''"
                    " WHERE id = ? AND claim = ?",
                    (retry_at, delivery.task_id, delivery.claim),
                )
            return cursor.rowcount == 1

    # -- bodies --------------------------------------------------------------

    def open_sink(self, task_id: str, kind: BodyKind) -> BodySink:
        with self._translated(), self._write() as conn:
            self._check_budget(conn, 0)

        def reserve(nbytes: int) -> None:
            with self._translated(), self._write() as conn:
                self._check_budget(conn, nbytes)
                conn.execute(
                    "INSERT INTO bodies (task_id, kind, bytes) VALUES (?, ?, ?)"
                    " ON CONFLICT (task_id, kind) DO UPDATE SET bytes = bytes + excluded.bytes",
                    (task_id, kind, nbytes),
                )

        def release(nbytes: int) -> None:
            with self._translated(), self._write() as conn:
                conn.execute(
                    "UPDATE bodies SET bytes = bytes - ? WHERE task_id = ? AND kind = ?",
                    (nbytes, task_id, kind),
                )
                conn.execute(
                    "DELETE FROM bodies WHERE task_id = ? AND kind = ? AND bytes <= 0",
                    (task_id, kind),
                )

        return self._files.sink(task_id, kind, reserve=reserve, release=release)

    def request_body(self, task_id: str, size: int, sha256: str) -> Body:
        return FileBody(self._files.file(task_id, "request"), size, sha256)

    @property
    def stored_bytes(self) -> int:
        """The bytes of the spooled bodies held now (or reserved by writers)."""
        with self._translated():
            return self._stored_in(self._conn())

    @staticmethod
    def _stored_in(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM bodies").fetchone()[0])

    def _check_budget(
        self, conn: sqlite3.Connection, nbytes: int, now: float | None = None
    ) -> None:
        # ``now`` is given by a submission only: it also waits while a writer does.
        limit = self.max_stored_bytes
        if limit is None:
            return
        stored = self._stored_in(conn)
        if (
            stored + nbytes > limit
            or stored >= limit
            or (
                now is not None
                and conn.execute("SELECT 1 FROM room_wanted WHERE until > ?", (now,)).fetchone()
            )
        ):
            raise StoreFull(f"the store's byte budget (max_stored_bytes={limit}) is spent")

    def want_room(self, seconds: float) -> None:
        if self.max_stored_bytes is None:
            return
        until = time.time() + seconds
        with self._translated(), self._write() as conn:
            if not seconds:
                conn.execute("DELETE FROM room_wanted")
                return
            conn.execute(
                "INSERT INTO room_wanted (one, until) VALUES (1, ?)"
                " ON CONFLICT (one) DO UPDATE SET until = max(until, excluded.until)",
                (until,),
            )

    @staticmethod
    def _forget_bodies(
        conn: sqlite3.Connection,
        task_ids: list[str],
        kinds: list[BodyKind] | tuple[BodyKind, ...] = ("request", "result"),
    ) -> None:
        conn.executemany(
            "DELETE FROM bodies WHERE task_id = ? AND kind = ?",
            [(task_id, kind) for task_id in task_ids for kind in kinds],
        )

    def sweep(self) -> int:
        """Remove the body files and rows nothing claims any more: a file no
        live writer holds whose task or row is gone, a row whose file is gone.
        Runs when the store opens (what a crash left behind); the number of
        files removed."""
        conn = self._conn()

        def referenced(task_id: str, kind: BodyKind) -> bool:
            row = conn.execute(
                "SELECT 1 FROM bodies AS b JOIN tasks AS t ON t.id = b.task_id"
                " WHERE b.task_id = ? AND b.kind = ?",
                (task_id, kind),
            ).fetchone()
            if row is None:
                with self._write() as write:
                    self._forget_bodies(write, [task_id], [kind])
            return row is not None

        removed = self._files.sweep(referenced)
        rows = conn.execute("SELECT task_id, kind FROM bodies").fetchall()
        stale = [
            (task_id, kind)
            for task_id, kind in rows
            if not os.path.exists(self._files.file(task_id, kind))
        ]
        if stale:
            with self._write() as write:
                # A row whose file is gone (and was not just made: the
                # writer creates the file before it reserves a byte).
                write.executemany("DELETE FROM bodies WHERE task_id = ? AND kind = ?", stale)
        return removed

    # -- expiry --------------------------------------------------------------

    @staticmethod
    def _count_in(conn: sqlite3.Connection) -> int:
        row = conn.execute(f"SELECT COUNT(*) FROM tasks WHERE {_ACTIVE}").fetchone()
        return int(row[0])

    @staticmethod
    def _expiry_due(conn: sqlite3.Connection, now: float) -> bool:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE expires_at <= ?1)"
            " OR EXISTS (SELECT 1 FROM tombstones WHERE expires_at <= ?1)",
            (now,),
        ).fetchone()
        return bool(row[0])

    def _expire_due(self, now: float) -> None:
        # A batch per transaction, so that writers are not held up long.
        while self._expiry_due(self._conn(), now):
            with self._write() as conn:
                self._expire(conn, now)

    def _expire(self, conn: sqlite3.Connection, now: float, task_id: str | None = None) -> None:
        """Inside a write transaction: move at most a batch of expired tasks
        (and ``task_id`` if it is one) to the tombstones, drop their keys, and
        forget tombstones past their time or beyond the bound."""
        rows = conn.execute(
            "SELECT id, owner FROM tasks WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
            (now, _EXPIRE_BATCH),
        ).fetchall()
        if task_id is not None:
            rows += conn.execute(
                "SELECT id, owner FROM tasks WHERE id = ? AND expires_at <= ?", (task_id, now)
            ).fetchall()
        if rows:
            tomb_expires = now + self.tombstone_ttl
            ids = [(row[0],) for row in rows]
            conn.executemany(
                "INSERT OR REPLACE INTO tombstones (id, owner, expires_at) VALUES (?, ?, ?)",
                [(row[0], row[1], tomb_expires) for row in rows],
            )
            conn.executemany("DELETE FROM keys WHERE task_id = ?", ids)
            conn.executemany("DELETE FROM tasks WHERE id = ?", ids)
            self._forget_bodies(conn, [row[0] for row in rows])
            # Removed before the commit: a file whose row is still there after
            # a rollback is read as gone (410) rather than kept for ever.
            for row in rows:
                self._files.remove(row[0])
        conn.execute(
            "DELETE FROM tombstones WHERE id IN "
            "(SELECT id FROM tombstones WHERE expires_at <= ? LIMIT ?)",
            (now, _EXPIRE_BATCH),
        )
        if rows:
            count = conn.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0]
            if count > self.max_tombstones:
                conn.execute(
                    "DELETE FROM tombstones WHERE id IN (SELECT id FROM tombstones"
                    " ORDER BY expires_at, rowid LIMIT ?)",
                    (count - self.max_tombstones,),
                )


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


def _inline(result: Result) -> bytes | None:
    """What the body column holds: the body itself, or NULL for one spooled
    to a file (listed in ``bodies``)."""
    return result.body if isinstance(result.body, bytes) else None


def _record(row: tuple[Any, ...]) -> TaskRecord:
    (
        task_id,
        state,
        created,
        started,
        finished,
        progress,
        status,
        headers,
        body,
        owner,
        lease_until,
        ttl,
        _expires_at,
        callback,
    ) = row
    result = None
    if status is not None:
        headers = [(str(k), str(v)) for k, v in json.loads(headers)]
        result = Result(status, headers, b"" if body is None else bytes(body))
    return TaskRecord(
        task_id,
        state=state,
        created=created,
        started=started,
        finished=finished,
        progress=None if progress is None else json.loads(progress),
        result=result,
        owner=owner,
        lease_until=lease_until,
        ttl=ttl,
        callback=None if callback is None else Callback(*json.loads(callback)),
    )
