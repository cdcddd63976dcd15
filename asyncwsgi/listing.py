"""The task list's query: ``state``, ``limit`` and ``cursor``, parsed strictly,
and its cursors (where the next page starts)."""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qs

from .task import State, TaskRecord

__all__ = ["BadQuery", "ListQuery", "decode_cursor", "encode_cursor", "parse_list_query"]

STATES: tuple[State, ...] = ("queued", "running", "done")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500

# What a task id looks like (the middleware makes them): a cursor naming
# anything else is not one the list gave.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{32}")
# ASCII digits only: str.isdigit() also takes "²" and "٣", which int() refuses
# or reads as another number. Four at most: more is past MAX_LIMIT anyway.
_LIMIT_RE = re.compile(r"[0-9]{1,4}")
# A creation time as repr() writes a float: no sign, no spaces, no "_",
# no "nan" or "inf" (float() takes all of those).
_CREATED_RE = re.compile(r"[0-9]+\.[0-9]+(?:e[+-][0-9]+)?|[0-9]+e[+-][0-9]+")


class BadQuery(ValueError):
    """A query parameter the list cannot use; its message is the client's 400."""


@dataclass(frozen=True, slots=True)
class ListQuery:
    state: State | None = None
    limit: int = DEFAULT_LIMIT
    before: tuple[float, str] | None = None


def parse_list_query(query_string: str) -> ListQuery:
    """The list's parameters from ``QUERY_STRING``; raises :class:`BadQuery`.
    Other parameters are ignored (a cache-buster, say); an empty value is a
    bad one, and the last of a repeated parameter counts."""
    try:
        query = parse_qs(query_string, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise BadQuery("the query string is not UTF-8") from None
    state = _last(query, "state")
    if state is not None and state not in STATES:
        raise BadQuery("state must be queued, running or done")
    raw_limit = _last(query, "limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not _LIMIT_RE.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise BadQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(raw_limit)
    raw_cursor = _last(query, "cursor")
    before = None
    if raw_cursor is not None:
        before = decode_cursor(raw_cursor)
        if before is None:
            raise BadQuery("cursor is not one this list gave")
    return ListQuery(state=_state(state), limit=limit, before=before)


def encode_cursor(record: TaskRecord) -> str:
    """The list's position after ``record`` (the last task of a page): opaque
    to clients, ``(created, id)`` inside."""
    return _encode((record.created, record.id))


def decode_cursor(cursor: str) -> tuple[float, str] | None:
    """The position a cursor names, or None when it is not one
    :func:`encode_cursor` could have made: a finite creation time written as
    repr() writes it, and a task id."""
    if not cursor.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        return None
    created, _, task_id = raw.partition(":")
    if not _CREATED_RE.fullmatch(created) or not _ID_RE.fullmatch(task_id):
        return None
    position = (float(created), task_id)
    # Re-encoded, it must be the very cursor: urlsafe_b64decode skips
    # characters outside its alphabet, so junk could ride along unseen.
    if not math.isfinite(position[0]) or _encode(position) != cursor:
        return None
    return position


def _encode(position: tuple[float, str]) -> str:
    raw = f"{position[0]!r}:{position[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _last(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _state(value: str | None) -> State | None:
    for state in STATES:
        if value == state:
            return state
    return None
