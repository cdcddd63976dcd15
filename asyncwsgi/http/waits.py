"""The requests of one process that may wait at once (``Prefer: wait`` and
event streams): at most ``max_waiting``, so that waits never hold every
thread of the server."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..metrics import INSTRUMENTS
from ..task import TaskRecord

if TYPE_CHECKING:
    from ..settings import Settings
    from ..stores import Store

__all__ = ["Waits"]


class Waits:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.max_wait = settings.max_wait
        self.max_waiting = settings.max_waiting
        self._waiting = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """One of the slots; False if all are taken."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                return False
            self._waiting += 1
        if INSTRUMENTS is not None:
            INSTRUMENTS.waiting.inc()
        return True

    def give(self) -> None:
        with self._lock:
            self._waiting -= 1
        if INSTRUMENTS is not None:
            INSTRUMENTS.waiting.dec()

    def wait(self, task_id: str, wait: int) -> tuple[TaskRecord | None, int | None]:
        """Honour ``Prefer: wait``: block until the task is done, at most
        ``max_wait`` seconds, unless every slot is taken; then answer at once
        (the preference is not applied). Returns the record read at the end
        and the seconds applied (None when not applied)."""
        if not self.take():
            return None, None
        try:
            seconds = min(wait, self.max_wait)
            return self.store.wait(task_id, seconds), int(seconds)
        finally:
            self.give()
