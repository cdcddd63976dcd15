"""What a store raises for its backend's faults: one family, so that the
HTTP side answers ``503`` with ``Retry-After`` and the runner knows which
failures to retry (an outage) and which to end at once (no room)."""

from __future__ import annotations

__all__ = ["BodyRemoved", "StoreFull", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store cannot be reached or cannot take a write right now (a server
    down, a lock held past the busy timeout, a full disk). Every store raises
    this, and only this, for such faults: the middleware answers ``503`` with
    ``Retry-After`` to a client, and the runner retries a finished result."""


class StoreFull(StoreUnavailable):
    """The store is up but has no room for this write (a full disk, a byte
    budget spent). New work is refused with ``503``; a result that cannot be
    stored is replaced by a short error result rather than retried for ever."""


class BodyRemoved(StoreFull):
    """A body's writer found its body removed under it: its task was deleted,
    timed out or judged lost, and the bytes it had reserved were given back.
    A write now would be outside the byte budget, so the writer stops."""

    def __init__(self) -> None:
        super().__init__("the body was removed while it was being written")
