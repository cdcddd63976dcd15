"""The SQLite store, in layers by job, each built on the one before:
``connection`` (the file, its tables and the connections), ``bodies``
(spooled bodies and the byte budget), ``retention`` (expiry and
tombstones), ``callbacks`` (completion callbacks waiting to be sent) and
``store`` (the task table's primitives); ``schema`` holds the SQL and the
row codec."""

from .store import SQLiteStore

__all__ = ["SQLiteStore"]
