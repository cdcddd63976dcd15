"""The SQLite store's tables and how a row becomes a task record."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ...task import Callback, Result, TaskRecord

__all__ = [
    "ACTIVE",
    "COLUMNS",
    "EXPIRE_BATCH",
    "ID_CHUNK",
    "LAPSED",
    "LIST_INDEXES",
    "RETURNING",
    "SCHEMA",
    "SCHEME",
    "SQLITE_BUSY",
    "SQLITE_FULL",
    "SQLITE_LOCKED",
    "inline",
    "record_of",
]

SCHEME = "sqlite:///"

# Expired tasks are moved to the tombstones in batches of this many, on the
# calls that touch the table: never a sweep of the whole table at once.
EXPIRE_BATCH = 100
# SQLite's result codes (in sqlite3 from Python 3.11; typeshed does not list them).
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_FULL = 13
# Ids per statement in heartbeat() (SQLite bounds the number of parameters).
ID_CHUNK = 500
# UPDATE ... RETURNING (SQLite 3.35): finishing a task tells whether it asked
# for a completion callback, so a task without one costs no statement for it.
RETURNING = sqlite3.sqlite_version_info >= (3, 35)

SCHEMA = """
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
ACTIVE = "state IN ('queued', 'running')"
LAPSED = ACTIVE + " AND lease_until < ?"

# The task list's order: indexes that match its WHERE and ORDER BY exactly, so
# that a page reads only its own rows.
LIST_INDEXES = """
CREATE INDEX IF NOT EXISTS tasks_list ON tasks (owner, created, id);
CREATE INDEX IF NOT EXISTS tasks_list_state ON tasks (owner, state, created, id);
"""

COLUMNS = (
    "id, state, created, started, finished, progress, status, headers, body, owner,"
    " lease_until, ttl, expires_at, callback"
)


def inline(result: Result) -> bytes | None:
    """What the body column holds: the body itself, or NULL for one spooled
    to a file (listed in ``bodies``)."""
    return result.body if isinstance(result.body, bytes) else None


def record_of(row: tuple[Any, ...]) -> TaskRecord:
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
