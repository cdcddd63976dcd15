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
from typing import Any

from ...task import BodyKind, Created, KeyEntry, Progress, Result, State, TaskRecord
from ..files import FileBody
from .callbacks import SQLiteCallbacks
from .schema import ACTIVE, COLUMNS, ID_CHUNK, LAPSED, RETURNING, SCHEME, inline, record_of

__all__ = ["SQLiteStore"]


class SQLiteStore(SQLiteCallbacks):
    """Tasks in an SQLite database file, shared by every process that opens it.

    Semantics are those of :class:`~asyncwsgi.stores.memory.MemoryStore`: results are
    kept ``ttl`` seconds after they finish, then leave a tombstone (410 Gone)
    for ``tombstone_ttl`` seconds, at most ``max_tombstones`` of them.
    ``timeout`` is how long a call waits for another process's write lock.

    The file must be on a local disk: SQLite's locks are not reliable over
    network filesystems. For several machines use a Redis store.
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteStore:
        """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
        if not url.startswith(SCHEME):
            raise ValueError(
                f"not an SQLite store URL: {url!r} (use sqlite:///relative.db "
                "or sqlite:////absolute/path.db)"
            )
        path = url[len(SCHEME) :]
        if not path:
            raise ValueError(f"an SQLite store URL needs a file path: {url!r}")
        return cls(path, **options)

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.url}>"

    # -- the primitives ------------------------------------------------------

    def _insert(
        self,
        record: TaskRecord,
        key: str | None,
        fingerprint: str | None,
        limit: int | None,
        room: int,
    ) -> Created:
        now = self.clock()
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
                f"INSERT OR REPLACE INTO tasks ({COLUMNS}) "
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
                    None if result is None else inline(result),
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
        now = self.clock()
        conn = self._conn()
        if self._expiry_due(conn, now):
            self._tidy(conn, now, task_id)
        row = conn.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is not None:
            record = record_of(row)
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
            for i in range(0, len(task_ids), ID_CHUNK):
                chunk = task_ids[i : i + ID_CHUNK]
                marks = ", ".join("?" * len(chunk))
                conn.execute(
                    f"UPDATE tasks SET lease_until = ? WHERE {ACTIVE} AND id IN ({marks})",
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
            inline(result),
            now,
            task_id,
        )
        if lapsed_before is None:
            query += ACTIVE
        else:
            query += LAPSED
            params += (lapsed_before,)
        body = result.body
        if RETURNING:
            query += " RETURNING callback IS NOT NULL"
        with self._write() as conn:
            cursor = conn.execute(query, params)
            if RETURNING:
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
                f"SELECT id FROM tasks WHERE {LAPSED} LIMIT ?",
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
        now = self.clock()
        conn = self._conn()
        if self._expiry_due(conn, now):
            with self._write() as conn:
                self._expire(conn, now)
        # Every column but the result's body (x'': empty): a page never loads bodies.
        columns = COLUMNS.replace(" body,", " x'',")
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
        return [record_of(row) for row in conn.execute(query, params)]
