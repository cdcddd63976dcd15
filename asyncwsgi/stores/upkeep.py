"""The store's upkeep while nobody calls it: expired results removed on time.

Every call that touches a store removes what is past its time lazily; a
process that spools bodies also runs a janitor, so that files and byte budget
come back with no traffic at all.
"""

from __future__ import annotations

from ..periodic import Periodic
from .base import Store, StoreUnavailable

__all__ = ["JANITOR_EVERY", "janitor"]

#: How often a janitor has the store remove what is past its time.
JANITOR_EVERY = 5.0


def janitor(store: Store) -> Periodic:
    """A thread (not started) that calls :meth:`Store.expire` every
    :data:`JANITOR_EVERY` seconds."""
    return Periodic(
        "asyncwsgi-janitor",
        store.expire,
        JANITOR_EVERY,
        what="removing expired results",
        outage=(StoreUnavailable,),
    )
