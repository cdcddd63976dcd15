"""Each attempt's outcome written to the store (sent, or due again at some
time), retried through an outage until its claim lapses; and the deliveries
this process sent but could not record, so that it does not send them twice."""

from __future__ import annotations

import logging
import threading
import time

from ..stores.base import Store, StoreUnavailable
from ..task import Delivery

__all__ = ["Outcomes"]

logger = logging.getLogger("asyncwsgi")


class Outcomes:
    """Records outcomes in ``store``; gives up at once once ``stopping`` is set."""

    def __init__(self, store: Store, stopping: threading.Event) -> None:
        self.store = store
        self._stopping = stopping
        self._lock = threading.Lock()
        # Deliveries sent (or given up) whose record the store did not take
        # before their claim lapsed: forgotten when claimed again, not resent.
        self._unrecorded: dict[str, float] = {}

    def record(self, delivery: Delivery, retry_at: float | None, lapses: float) -> None:
        """``retry_at`` None: done with (sent, or given up); else due again
        then. Tried until the store takes it, or the claim lapses at
        ``lapses`` (monotonic; another process may have taken the delivery
        over): a record lost to an outage would have the callback sent again."""
        delay = 0.1
        while True:
            try:
                self.store.settle_callback(delivery, retry_at)
                return
            except StoreUnavailable:
                if time.monotonic() + delay > lapses or self._stopping.is_set():
                    logger.error(
                        "asyncwsgi: could not record the callback of task %s: "
                        "the store is unavailable",
                        delivery.task_id,
                    )
                    if retry_at is None:
                        # Sent (or given up): if this process claims it again,
                        # it is forgotten instead of sent twice.
                        with self._lock:
                            self._unrecorded[delivery.task_id] = delivery.deadline
                    return
                logger.warning("asyncwsgi: the store is unavailable; retrying a callback's record")
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def unrecorded(self, task_id: str) -> bool:
        """Whether this process sent ``task_id``'s callback but could not
        record it (then forgotten: the caller records it now)."""
        with self._lock:
            return self._unrecorded.pop(task_id, None) is not None

    def prune(self) -> None:
        # Bounded: past its deadline a delivery is dropped by whoever holds
        # it, and a live process has few such.
        now = time.time()
        with self._lock:
            for task_id in [t for t, deadline in self._unrecorded.items() if deadline < now]:
                del self._unrecorded[task_id]
