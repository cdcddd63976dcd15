"""The callback sender's threads, running in every process that shares the
store from the moment the middleware is built, whether or not it serves a
request: a callback that falls due (a task finished elsewhere, one ended by
the sweeper) is sent by itself. A process forked from one where it runs
(gunicorn ``--preload``) starts its own, afresh, since a fork copies no
thread."""

from __future__ import annotations

import os
import threading
import weakref

from ..callbacks import CallbackSender

__all__ = ["SenderPerProcess"]


class SenderPerProcess:
    def __init__(self, sender: CallbackSender, closing: threading.Event) -> None:
        self.sender = sender
        self._closing = closing
        self._pid = 0
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            # A weak reference: the hook outlives the object, not the reverse.
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _in_child(ref))

    def start(self) -> None:
        """Started in this process unless it is already, or the middleware is
        closing (no new work)."""
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._pid != pid and not self._closing.is_set():
                self._pid = pid
                self.sender.start()

    def stop(self) -> None:
        """Stopped, if this process started it."""
        if self._pid == os.getpid():
            self.sender.stop()


def _in_child(ref: weakref.ref[SenderPerProcess]) -> None:
    """In a forked child: the parent's sender ran, so this process runs one."""
    per_process = ref()
    if per_process is None or not per_process._pid:
        return
    per_process._lock = threading.Lock()  # (a copy may be held by a thread left behind)
    per_process.sender.forked()
    per_process.start()
