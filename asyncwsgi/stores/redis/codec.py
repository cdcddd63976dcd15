"""The task record as the Redis store keeps it: a hash of strings and bytes."""

from __future__ import annotations

import json
from typing import Any, cast

from ...task import Callback, Result, TaskRecord

__all__ = ["headers_json", "num", "record", "record_fields", "text"]


def num(value: float) -> str:
    """A number as Lua and Redis read it back exactly."""
    return repr(float(value))


def text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def headers_json(headers: list[tuple[str, str]]) -> str:
    return json.dumps([[name, value] for name, value in headers])


def record(task_id: str, fields: dict[str, Any]) -> TaskRecord:
    """The record of a task from its hash's fields."""

    def number(name: str) -> float | None:
        value = fields.get(name)
        return None if value is None else float(value)

    result: Result | None = None
    if "status" in fields:
        result = Result(
            text(fields["status"]),
            [(name, value) for name, value in json.loads(fields["headers"])],
            bytes(fields.get("body", b"")),
        )
    progress = fields.get("progress")
    owner = fields.get("owner")
    state = text(fields["state"])
    callback = fields.get("callback")
    return TaskRecord(
        task_id,
        state=cast(Any, state),
        created=number("created") or 0.0,
        started=number("started"),
        finished=number("finished"),
        progress=None if progress is None else json.loads(progress),
        result=result,
        owner=None if owner is None else text(owner),
        # A finished task keeps the field (one command less), not the lease.
        lease_until=None if state == "done" else number("lease_until"),
        ttl=float(fields.get("ttl", 300.0)),
        callback=None if callback is None else Callback(*json.loads(callback)),
    )


def record_fields(task: TaskRecord) -> list[str | bytes]:
    """A new task's hash as field/value pairs (the fields it has)."""
    fields: list[str | bytes] = ["state", task.state, "created", num(task.created)]
    fields += ["ttl", num(task.ttl)]
    if task.owner is not None:
        fields += ["owner", task.owner]
    if task.started is not None:
        fields += ["started", num(task.started)]
    if task.lease_until is not None:
        fields += ["lease_until", num(task.lease_until)]
    if task.progress is not None:
        fields += ["progress", json.dumps(task.progress)]
    if task.callback is not None:
        fields += ["callback", json.dumps([task.callback.url, task.callback.status_url])]
    return fields
