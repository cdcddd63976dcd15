"""The byte budget's rule, once for every store: ``max_stored_bytes`` bounds
the spooled bodies a store holds (reserved and written); a new task needs
``room`` bytes free and no writer waiting for room; a writer's reservation is
all or nothing. Memory and SQLite call :func:`check_room` with what they
read; Redis's scripts hold the same rule in Lua, and the store contract suite
holds every store to it."""

from __future__ import annotations

from .errors import StoreFull

__all__ = ["BudgetSpent", "check_room"]


class BudgetSpent(StoreFull):
    """The byte budget has no room for this write (the store itself is fine)."""

    def __init__(self, limit: int | None) -> None:
        super().__init__(f"the store's byte budget (max_stored_bytes={limit}) is spent")
        self.limit = limit


def check_room(limit: int | None, stored: int, room: int, writer_waits: bool = False) -> None:
    """Raise :class:`BudgetSpent` unless ``room`` more bytes fit beside the
    ``stored`` (and reserved) ones, some room is left, and no writer waits."""
    if limit is not None and (stored + room > limit or stored >= limit or writer_waits):
        raise BudgetSpent(limit)
