"""The SQLite store's retention: finished tasks past their ``ttl`` become
tombstones, a batch at a time, on the calls that touch the table."""

from __future__ import annotations

import sqlite3

from .bodies import SQLiteBodies
from .schema import ACTIVE, EXPIRE_BATCH, SQLITE_BUSY, SQLITE_LOCKED

__all__ = ["SQLiteRetention"]


class SQLiteRetention(SQLiteBodies):
    """The third layer of :class:`~asyncwsgi.stores.sqlite.SQLiteStore`:
    expiry, tombstones and their bound."""

    def _tidy(self, conn: sqlite3.Connection, now: float, task_id: str) -> None:
        """Expire what is due, on a read: only if the write lock is free now.
        A poll must not wait (and fail after the busy timeout) because another
        process is writing; the next call tidies up."""
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            with self._write() as writing:
                self._expire(writing, now, task_id)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (SQLITE_BUSY, SQLITE_LOCKED):
                raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")

    @staticmethod
    def _count_in(conn: sqlite3.Connection) -> int:
        row = conn.execute(f"SELECT COUNT(*) FROM tasks WHERE {ACTIVE}").fetchone()
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
            (now, EXPIRE_BATCH),
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
            (now, EXPIRE_BATCH),
        )
        if rows:
            count = conn.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0]
            if count > self.max_tombstones:
                conn.execute(
                    "DELETE FROM tombstones WHERE id IN (SELECT id FROM tombstones"
                    " ORDER BY expires_at, rowid LIMIT ?)",
                    (count - self.max_tombstones,),
                )
