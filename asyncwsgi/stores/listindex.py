"""The task list's index for a store that keeps its table in Python: per
(owner, state), and per (owner, any state), the live tasks' ``(created, id)``
in ascending order, so that a page costs O(limit) with a bisection."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from ..task import State, TaskRecord

__all__ = ["ListIndex"]

Entry = tuple[float, str]


class ListIndex:
    """Not thread-safe: its store calls it with its own lock held."""

    def __init__(self, records: Iterable[TaskRecord]) -> None:
        self._listed: dict[tuple[str | None, State | None], list[Entry]] = {}
        for record in records:
            entry = (record.created, record.id)
            for key in ((record.owner, record.state), (record.owner, None)):
                self._listed.setdefault(key, []).append(entry)
        for index in self._listed.values():
            index.sort()

    def move(self, record: TaskRecord, old: State | None, new: State | None) -> None:
        """Move a task from state ``old`` to ``new`` (None: not listed)."""
        listed = self._listed
        entry = (record.created, record.id)
        if old is not None:
            for key in ((record.owner, old), (record.owner, None)):
                index = listed.get(key)
                if index is not None:
                    at = bisect.bisect_left(index, entry)
                    if at < len(index) and index[at] == entry:
                        del index[at]
                    if not index:
                        del listed[key]
        if new is not None:
            for key in ((record.owner, new), (record.owner, None)):
                bisect.insort(listed.setdefault(key, []), entry)

    def page(
        self, owner: str | None, state: State | None, before: Entry | None, limit: int
    ) -> list[str]:
        """The ids of one page, newest first, strictly older than ``before``."""
        index = self._listed.get((owner, state), [])
        end = len(index) if before is None else bisect.bisect_left(index, before)
        return [task_id for _, task_id in reversed(index[max(0, end - limit) : end])]
