"""A duty done every so often in a thread of its own: the heartbeat, the
sweep of lapsed leases, the removal of expired results.

Each is a named daemon thread that calls one function, waits, and calls it
again, until stopped. A round that fails is logged, and the thread goes on:
a thread that died silently would take its guarantee with it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable

__all__ = ["Periodic"]

logger = logging.getLogger("asyncwsgi")

# After a failed round the next comes sooner, the delay doubling from this up
# to the duty's own period: quick after a blip, no busier than usual during
# a long outage.
_RETRY_FIRST = 0.05

# The jitter draws from a generator of its own: the module-level one is the
# app's (which may seed it, and then would make every process sweep in step),
# and a thread that moves it under a test breaks property-based tests.
_jitter = random.Random()


class Periodic:
    """Call ``work`` every ``every`` seconds (up to ``jitter`` of it more or
    less, so that processes started together do not call in step) in a daemon
    thread named ``name``, from :meth:`start` until :meth:`stop`.

    >>> sweeper = Periodic("asyncwsgi-sweeper", store.reclaim, 5.0, what="sweeping leases")
    >>> sweeper.start()

    With ``survive_fork``, a process forked from one where it runs runs its
    own at once (the thread itself is not copied by ``fork()``): a server
    that forks its workers from a preloaded app gets the duty in each.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], object],
        every: float,
        *,
        what: str,
        jitter: float = 0.0,
        survive_fork: bool = False,
        outage: tuple[type[Exception], ...] = (),
    ) -> None:
        self.name = name
        # The errors that mean the duty's resource is away for now (a store
        # that is down): expected, so said in one line, with no traceback.
        self.outage = outage
        self.work = work
        self.every = every
        self.what = what
        self.jitter = jitter
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._survive_fork = survive_fork

    @property
    def running(self) -> bool:
        return self._pid == os.getpid() and not self._stop.is_set()

    def start(self) -> None:
        """Start the thread in this process, unless it runs already or was
        stopped."""
        if self.running or self._stop.is_set():
            return
        with self._lock:
            if self.running or self._stop.is_set():
                return
            if self._survive_fork and hasattr(os, "register_at_fork"):
                # Once, at the first start. A weak reference: the hook
                # outlives the object, not the reverse.
                self._survive_fork = False
                ref = weakref.ref(self)
                os.register_at_fork(after_in_child=lambda: _restart(ref))
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop, and wait (up to ``timeout`` seconds) for a round under way:
        once this returns, ``work`` is not called again."""
        self._stop.set()
        thread = self._thread
        if (
            thread is not None
            and self._pid == os.getpid()
            and thread is not threading.current_thread()
        ):
            thread.join(timeout)

    def _next(self) -> float:
        if not self.jitter:
            return self.every
        return self.every * (1 + _jitter.uniform(-self.jitter, self.jitter))

    def _loop(self) -> None:
        wait = self._next()
        failing_since: float | None = None
        said: set[bool] = set()  # what this run of failures has logged: outage, bug
        while not self._stop.wait(wait):
            try:
                self.work()
            # Broad on purpose: this thread must outlive a bad round (a store
            # down, a bug), or the duty stops for the process's whole life.
            except Exception as exc:
                wait = min(self.every, _RETRY_FIRST if failing_since is None else wait * 2)
                if failing_since is None:
                    failing_since = time.monotonic()
                outage = isinstance(exc, self.outage)
                if outage not in said:  # once per run of failures, for each kind
                    said.add(outage)
                    if outage:
                        logger.warning("asyncwsgi: %s failed: %s; retrying", self.what, exc)
                    else:
                        logger.exception("asyncwsgi: %s failed; retrying", self.what)
            else:
                if failing_since is not None:
                    logger.warning(
                        "asyncwsgi: %s again after %.1f s of failures",
                        self.what,
                        time.monotonic() - failing_since,
                    )
                    failing_since = None
                    said.clear()
                wait = self._next()


def _restart(ref: weakref.ref[Periodic]) -> None:
    """In a forked child: start anew what ran in the parent."""
    periodic = ref()
    if periodic is None or periodic._stop.is_set() or not periodic._pid:
        return
    periodic._lock = threading.Lock()  # may have been held by a thread not copied
    periodic._thread = None
    periodic._pid = 0
    periodic.start()
