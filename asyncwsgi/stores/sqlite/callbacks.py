"""The SQLite store's completion callbacks waiting to be sent: claimed by
one process at a time, settled by the claim's holder."""

from __future__ import annotations

import secrets

from ...task import Delivery
from .retention import SQLiteRetention

__all__ = ["SQLiteCallbacks"]


class SQLiteCallbacks(SQLiteRetention):
    """The fourth layer of :class:`~asyncwsgi.stores.sqlite.SQLiteStore`:
    the queue of completion callbacks (a row per delivery due)."""

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
