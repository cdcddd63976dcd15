"""The task's handle for the app: ``environ["asyncwsgi.task"]`` while it runs."""

from __future__ import annotations

import logging
import math
import time

from ..stores.base import Store, StoreUnavailable

__all__ = ["TaskHandle"]

logger = logging.getLogger("asyncwsgi")


class TaskHandle:
    """The running task, as the app sees it.

    >>> task = environ.get("asyncwsgi.task")
    >>> if task is not None:
    ...     task.set_progress(3, 10, "rendering page 3")
    ...     if task.cancelled:
    ...         return []

    ``cancelled`` turns true once the task was deleted (``DELETE`` on its
    status URL); its result will be dropped, so the app may stop early. With a
    shared store the answer is refreshed at most every ``cancel_check``
    seconds, so a loop can read it freely.

    Both are advisory: while the store cannot be reached, progress is not
    recorded and ``cancelled`` keeps its last answer (logged once per
    outage), and the app goes on; only its result must reach the store.
    """

    __slots__ = ("id", "_store", "_cancelled", "_checked", "_failing", "cancel_check")

    def __init__(self, task_id: str, store: Store, *, cancel_check: float = 0.25) -> None:
        self.id = task_id
        self._store = store
        self._cancelled = False
        self._checked = 0.0
        self._failing = False
        self.cancel_check = cancel_check if store.shared else 0.0

    def set_progress(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress, shown as ``{"done", "total", "message"}`` in the
        status JSON. The numbers must be finite: status documents are strict
        JSON (RFC 8259 has no NaN or Infinity, and browsers' ``JSON.parse``
        rejects them), so ``nan`` and ``inf`` raise ``ValueError``."""
        if isinstance(done, bool) or not isinstance(done, int | float):
            raise TypeError("done must be a number")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int | float)):
            raise TypeError("total must be a number or None")
        if not math.isfinite(done) or (total is not None and not math.isfinite(total)):
            raise ValueError("progress numbers must be finite (no NaN or infinity)")
        if message is not None and not isinstance(message, str):
            raise TypeError("message must be a str or None")
        try:
            self._store.set_progress(self.id, {"done": done, "total": total, "message": message})
        except StoreUnavailable as exc:  # the store's fault, not the app's
            self._failed("progress not recorded", exc)
        else:
            self._failing = False

    @property
    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._checked >= self.cancel_check:
            self._checked = now
            try:
                self._cancelled = self._store.is_cancelled(self.id)
            except StoreUnavailable as exc:  # the store's fault: keep the last answer
                self._failed("cancellation not checked", exc)
            else:
                self._failing = False
        return self._cancelled

    def _failed(self, what: str, exc: StoreUnavailable) -> None:
        if not self._failing:
            self._failing = True
            logger.warning("asyncwsgi: task %s: %s: %s", self.id, what, exc)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"
