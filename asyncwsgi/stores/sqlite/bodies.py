"""The SQLite store's spooled bodies: files in ``results_dir`` listed in the
``bodies`` table with their sizes, the byte budget (``max_stored_bytes``)
checked against that table, and the sweep of what a crash left behind."""

from __future__ import annotations

import os
import sqlite3

from ...task import Body, BodyKind, BodySink
from ..budget import check_room
from ..files import FileBody, ResultsDir
from .connection import SQLiteConnections

__all__ = ["SQLiteBodies"]


class SQLiteBodies(SQLiteConnections):
    """The second layer of :class:`~asyncwsgi.stores.sqlite.SQLiteStore`:
    bodies too large for a row, and the budget they are held to."""

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
        super().__init__(
            path, max_tombstones=max_tombstones, tombstone_ttl=tombstone_ttl, timeout=timeout
        )
        self.results_dir = os.path.abspath(results_dir or self.path + "-results")
        self.max_stored_bytes = max_stored_bytes
        self._files = ResultsDir(self.results_dir, durable=True)
        with self._translated():
            self.sweep()

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
        waits = now is not None and bool(
            conn.execute("SELECT 1 FROM room_wanted WHERE until > ?", (now,)).fetchone()
        )
        check_room(limit, self._stored_in(conn), nbytes, waits)

    def want_room(self, seconds: float) -> None:
        if self.max_stored_bytes is None:
            return
        until = self.clock() + seconds
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
