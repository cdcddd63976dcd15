"""The requests of one process that may wait at once (``Prefer: wait`` and
event streams): at most ``max_waiting``, so that waits never hold every
thread of the server.

By default (``max_waiting=None``) the bound follows the server: one fewer
than the server threads that have brought this process a submission or a
status request so far (:meth:`Waits.seen`), and never below 2 (the fixed
default of earlier versions, which a server that starts a thread per
request, and reuses the ids of ended ones, needs for a stream's reconnect
while the old stream still waits). Servers do not say how many threads they
run (gunicorn's gthread worker and waitress set ``wsgi.multithread``, not a
count), but every one of them shows up here once requests overlap, so the
bound grows to the pool's size less one: 7 under gunicorn ``-k gthread
--threads 8``, 3 under waitress's default 4 threads; a sync worker answers
one request at a time, so its one request may wait (holding the process, as
any request there does). From 3 threads up, one is always left for
everything else. A server that starts a thread per request has no pool to
exhaust; the count stops at ``_THREADS_COUNTED``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .. import metrics
from ..task import TaskRecord

if TYPE_CHECKING:
    from ..settings import Settings
    from ..stores import Store

__all__ = ["Waits"]

# Server threads counted at most (a server with a thread per request would
# otherwise grow the set with every new thread id).
_THREADS_COUNTED = 256


class Waits:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.max_wait = settings.max_wait
        self.max_waiting = settings.max_waiting
        self._waiting = 0
        self._gauged = 0  # of those, the ones in the waiting gauge
        self._lock = threading.Lock()
        self._threads: set[int] = set()  # the server threads seen

    def seen(self) -> None:
        """Count the calling server thread (a submission or status request is
        being answered on it); a no-op once the bound is set by hand."""
        threads = self._threads
        if self.max_waiting is None and len(threads) < _THREADS_COUNTED:
            threads.add(threading.get_ident())  # one atomic step under the GIL

    def take(self) -> bool:
        """One of the slots; False if all are taken."""
        instruments = metrics.INSTRUMENTS
        with self._lock:
            bound = self.max_waiting
            if bound is None:
                bound = max(2, len(self._threads) - 1)
            if self._waiting >= bound:
                return False
            self._waiting += 1
            if instruments is not None:
                self._gauged += 1
        if instruments is not None:
            instruments.waiting.inc()
        return True

    def give(self) -> None:
        instruments = metrics.INSTRUMENTS
        with self._lock:
            self._waiting -= 1
            # Waits taken before counting was switched on were not added to
            # the gauge: it never goes below the waits it counted.
            if instruments is None or not self._gauged:
                return
            self._gauged -= 1
        instruments.waiting.dec()

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
