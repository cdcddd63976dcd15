"""The deliveries a process holds, by receiver (origin): those waiting for a
sending thread and how many are being sent, so that slow receivers hold a few
of the threads and never all of them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..task import Delivery
from .allow import origin_of

__all__ = ["Held", "Lanes"]


@dataclass(slots=True)
class Held:
    """A delivery this process claimed, and when (monotonic seconds)."""

    delivery: Delivery
    origin: str
    claimed: float


class _Origin:
    """One receiver's deliveries: those waiting, and how many are being sent."""

    __slots__ = ("sending", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[Held] = deque()
        self.sending = 0


class Lanes:
    """One lane per origin, taken in turn. Not locked: its owner calls it
    with its own lock held. ``per_origin`` (given on each call, as the
    sender's setting is now) is the attempts at once to one origin; as many
    more may wait for it."""

    def __init__(self) -> None:
        self._origins: dict[str, _Origin] = {}
        self.held = 0  # claimed and not yet settled: waiting or being sent

    def busiest(self) -> int:
        """The most deliveries one origin holds (being sent and waiting)."""
        return max((o.sending + len(o.waiting) for o in self._origins.values()), default=0)

    def add(self, delivery: Delivery, claimed: float, per_origin: int) -> bool:
        """Hold ``delivery``; False if its origin holds ``2 * per_origin`` already."""
        origin = origin_of(delivery.url)
        lane = self._origins.setdefault(origin, _Origin())
        if lane.sending + len(lane.waiting) >= 2 * per_origin:
            return False
        lane.waiting.append(Held(delivery, origin, claimed))
        self.held += 1
        return True

    def ready(self, per_origin: int) -> int:
        """How many waiting deliveries could start now."""
        return sum(min(len(o.waiting), per_origin - o.sending) for o in self._origins.values())

    def next(self, per_origin: int) -> Held | None:
        """The next delivery whose origin has a free place, counted as being sent."""
        for name, origin in self._origins.items():
            if origin.waiting and origin.sending < per_origin:
                held = origin.waiting.popleft()
                origin.sending += 1
                # To the back of the line: the next one goes to another origin.
                del self._origins[name]
                self._origins[name] = origin
                return held
        return None

    def done(self, held: Held) -> None:
        """``held`` was sent (or given up): its place is free."""
        origin = self._origins.get(held.origin)
        if origin is not None:
            origin.sending -= 1
            if not origin.sending and not origin.waiting:
                del self._origins[held.origin]
        self.held -= 1

    def drain(self) -> list[Held]:
        """Every delivery still waiting, no longer held."""
        waiting = [held for origin in self._origins.values() for held in origin.waiting]
        for origin in self._origins.values():
            origin.waiting.clear()
        self.held -= len(waiting)
        return waiting
