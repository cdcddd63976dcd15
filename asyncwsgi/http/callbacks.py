"""The callback sender's threads, started in each process that serves
requests, on its first one: threads started before a fork (gunicorn
``--preload``) would not run in the child."""

from __future__ import annotations

import os
import threading

from ..callbacks import CallbackSender

__all__ = ["SenderPerProcess"]


class SenderPerProcess:
    def __init__(self, sender: CallbackSender, closing: threading.Event) -> None:
        self.sender = sender
        self._closing = closing
        self._pid = 0
        self._lock = threading.Lock()

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
