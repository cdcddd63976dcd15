"""The task list's cursors: where the next page starts."""

from __future__ import annotations

import base64
import binascii
import re

from .task import TaskRecord

__all__ = ["decode_cursor", "encode_cursor"]

# What a task id looks like (the middleware makes them): a cursor naming
# anything else is not one the list gave.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{32}")


def encode_cursor(record: TaskRecord) -> str:
    """The list's position after ``record`` (the last task of a page): opaque
    to clients, ``(created, id)`` inside."""
    raw = f"{record.created!r}:{record.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, task_id = raw.partition(":")
        position = (float(created), task_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return position if _ID_RE.fullmatch(task_id) else None
