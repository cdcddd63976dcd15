"""The task list's pages from the store's index (``lua/list_page.lua``)."""

from __future__ import annotations

from typing import Any, cast

from ...task import State, TaskRecord
from .codec import num, record, text
from .scripts import Scripts

__all__ = ["page"]


def page(
    scripts: Scripts,
    prefix: str,
    owner: str | None,
    state: State | None,
    before: tuple[float, str] | None,
    limit: int,
    now: float,
) -> list[TaskRecord]:
    """One page of ``owner``'s tasks (see :meth:`Store.list_tasks`) at ``now``."""
    base = f"{prefix}list:{owner or ''}:"
    answer = cast(
        "list[Any]",
        scripts.run(
            "list_page",
            [base + "active", base + "done"],
            [
                num(now),
                int(limit),
                "" if before is None else num(before[0]),
                "" if before is None else before[1],
                state or "",
            ],
        ),
    )
    records = []
    for i in range(0, len(answer), 2):
        raw = answer[i + 1]
        fields = {text(raw[j]): raw[j + 1] for j in range(0, len(raw), 2)}
        records.append(record(text(answer[i]), fields))
    return records
