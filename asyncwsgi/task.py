"""``environ["asyncwsgi.task"]``: what the app sees of its own task."""

from __future__ import annotations

import time

from .store import Store

__all__ = ["TaskHandle"]


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
    """

    __slots__ = ("id", "_store", "_cancelled", "_checked", "cancel_check")

    def __init__(self, task_id: str, store: Store, *, cancel_check: float = 0.25) -> None:
        self.id = task_id
        self._store = store
        self._cancelled = False
        self._checked = 0.0
        self.cancel_check = cancel_check if store.shared else 0.0

    def set_progress(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress, shown as ``{"done", "total", "message"}`` in the
        status JSON."""
        if isinstance(done, bool) or not isinstance(done, int | float):
            raise TypeError("done must be a number")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int | float)):
            raise TypeError("total must be a number or None")
        if message is not None and not isinstance(message, str):
            raise TypeError("message must be a str or None")
        self._store.set_progress(self.id, {"done": done, "total": total, "message": message})

    @property
    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._checked >= self.cancel_check:
            self._checked = now
            self._cancelled = self._store.is_cancelled(self.id)
        return self._cancelled

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"
