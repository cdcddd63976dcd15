"""The callback sender: one thread claims due deliveries from the store,
sending threads (started as they are needed) make the attempts and record
each outcome; see the package's documentation for the rules."""

from __future__ import annotations

import logging
import ssl
import threading
import time

from ..stores.base import Store, StoreUnavailable
from ..task import Delivery
from .attempt import ATTEMPT_FAULTS
from .attempt import post as post_to
from .lanes import Held, Lanes
from .outcomes import Outcomes
from .webhook import request

__all__ = ["CallbackSender", "backoff"]

logger = logging.getLogger("asyncwsgi")

# Time kept between an attempt's deadline and its claim's end, to record it.
_SETTLE_MARGIN = 1.0
# An idle sending thread ends after this many seconds.
_IDLE = 5.0
# Deliveries a process holds at once, per sending thread: those waiting for
# a thread cost a few hundred bytes each, and slow receivers must not hold
# every claim (each origin holds at most 2 * per_origin).
_CLAIMS_PER_THREAD = 4


def backoff(attempts: int, cap: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 1, 2, 4..."""
    return float(min(cap, 2 ** min(attempts, 30)))


class CallbackSender:
    """Sends the completion callbacks due in ``store``, signed with ``key``.

    One thread claims due deliveries (every ``poll`` seconds, and as soon as
    a place frees); up to ``workers`` sending threads, started as they are
    needed, send them, at most ``per_origin`` at once to one origin (and as
    many more wait for it). Each attempt ends within
    ``attempt_timeout`` seconds in all (connecting within
    ``connect_timeout``, and the status line read within ``read_timeout``
    of the request sent). A claim lasts ``claim_lease`` seconds, longer than
    any attempt and its wait: a process that dies holding one leaves it to
    another after that. Every step survives its own failure (a store that is
    down, a receiver that hangs): the threads log it and go on.
    """

    def __init__(
        self,
        store: Store,
        key: bytes,
        *,
        workers: int = 64,
        per_origin: int = 8,
        poll: float = 0.25,
        connect_timeout: float = 3.0,
        read_timeout: float = 5.0,
        attempt_timeout: float = 10.0,
        max_backoff: float = 60.0,
        claim_lease: float = 60.0,
    ) -> None:
        self.store = store
        self.key = key
        self.workers = workers
        self.per_origin = per_origin
        self.poll = poll
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.attempt_timeout = attempt_timeout
        self.max_backoff = max_backoff
        self.claim_lease = claim_lease
        self._check()
        self._tls: ssl.SSLContext | None = None
        self.forked()

    def forked(self) -> None:
        """Start afresh, with nothing held and no thread: what a process
        forked from one that ran this sender has (its threads, and what they
        held, stayed with the parent, which sends it)."""
        self._cond = threading.Condition()
        self._lanes = Lanes()  # guarded by _cond
        self._senders: set[threading.Thread] = set()
        self._idle = 0  # sending threads waiting for work
        self._serial = 0
        self._stop = threading.Event()
        # Set when a sending thread finishes one: a place may be free.
        self._wake = threading.Event()
        self._probed = 0.0
        self._claimer: threading.Thread | None = None
        self._outcomes = Outcomes(self.store, self._stop)

    def _check(self) -> None:
        if self.claim_lease <= self.attempt_timeout + _SETTLE_MARGIN:
            raise ValueError(
                f"claim_lease ({self.claim_lease} s) must exceed attempt_timeout "
                f"({self.attempt_timeout} s) by {_SETTLE_MARGIN} s: a claim must outlive "
                "any attempt, or a live process could send one delivery twice"
            )
        if self.workers < 1 or self.per_origin < 1:
            raise ValueError("workers and per_origin must be at least 1")

    def start(self) -> None:
        self._check()
        self._claimer = threading.Thread(
            target=self._claim_loop, name="asyncwsgi-callbacks", daemon=True
        )
        self._claimer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming; attempts under way finish (within ``timeout``);
        deliveries claimed but not started are handed back to the store at
        once (one attempt counted), else when their claim lapses."""
        self._stop.set()
        self._wake.set()
        with self._cond:
            waiting = self._lanes.drain()
            self._cond.notify_all()
        for held in waiting:
            try:
                self.store.settle_callback(held.delivery, time.time())
            except StoreUnavailable:
                pass  # its claim lapses instead
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        with self._cond:
            threads = [self._claimer, *self._senders]
        for thread in threads:
            if thread is not None and thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- claiming ------------------------------------------------------------

    def _claim_loop(self) -> None:
        delay = self.poll
        outage = self.poll  # the wait after a failed claim, doubled each time
        while True:
            self._wake.wait(delay)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                full = self._claim_once()
            except StoreUnavailable:
                # The store is down: try again, less often, until it is back.
                logger.warning("asyncwsgi: could not claim completion callbacks: store unavailable")
                outage = min(outage * 2, 5.0)
                delay = outage
                continue
            except Exception:
                # A bug: logged with its traceback; the claiming thread must
                # survive it, or no callback would ever be sent again.
                logger.exception("asyncwsgi: claiming completion callbacks failed")
                delay = 5.0
                continue
            outage = self.poll
            delay = 0.0 if full else self.poll  # a full claim: more may be due now

    def _claim_once(self) -> bool:
        """Claim what can be placed; True if the claim was full (and room is left)."""
        cap = 2 * self.per_origin  # being sent and waiting, per origin
        with self._cond:
            room = _CLAIMS_PER_THREAD * self.workers - self._lanes.held
            busiest = self._lanes.busiest()
        # A claim takes deliveries in due order, whoever receives them: no
        # more than the busiest origin can still take, so a burst to one
        # receiver is claimed as it drains. A saturated origin must not stop
        # the others: then a small claim once a poll, and what it brings for
        # the saturated one goes back with a backoff, as a failed attempt.
        if busiest < cap:
            limit = min(room, cap - busiest)
        else:
            now = time.monotonic()
            if now - self._probed < self.poll:
                return False
            self._probed = now
            limit = min(room, self.per_origin)
        if limit <= 0:
            return False
        # Taken before the claim: the store counts the lease from then.
        claimed = time.monotonic()
        deliveries = self.store.claim_callbacks(time.time(), self.claim_lease, limit)
        refused: list[Delivery] = []
        recorded: list[Delivery] = []
        returned: list[Delivery] = []
        with self._cond:
            for delivery in deliveries:
                if self._stop.is_set():
                    returned.append(delivery)  # stopped meanwhile: nobody will send it
                    continue
                if self._outcomes.unrecorded(delivery.task_id):
                    recorded.append(delivery)
                    continue
                if not self._lanes.add(delivery, claimed, self.per_origin):
                    refused.append(delivery)
            self._spawn()
            self._cond.notify_all()
        self._outcomes.prune()
        for delivery in recorded:
            self._record(delivery, None, claimed)
        for delivery in returned:
            self._record(delivery, time.time(), claimed)
        for delivery in refused:
            retry_at = time.time() + backoff(delivery.attempts, self.max_backoff)
            self._record(delivery, min(retry_at, delivery.deadline), claimed)
        return len(deliveries) == limit and not refused and limit < room

    # -- sending -------------------------------------------------------------

    def _spawn(self) -> None:
        """Start sending threads for the work that can start now (called
        with the lock held)."""
        ready = self._lanes.ready(self.per_origin)
        while self._idle < ready and len(self._senders) < self.workers:
            self._serial += 1
            thread = threading.Thread(
                target=self._send_loop, name=f"asyncwsgi-callback-{self._serial}", daemon=True
            )
            self._senders.add(thread)
            self._idle += 1  # counted idle until it takes its first delivery
            thread.start()

    def _send_loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                idle_until = time.monotonic() + _IDLE
                held = None
                while held is None:
                    held = None if self._stop.is_set() else self._lanes.next(self.per_origin)
                    if held is not None:
                        break
                    left = idle_until - time.monotonic()
                    if self._stop.is_set() or left <= 0:
                        self._idle -= 1
                        self._senders.discard(me)
                        return
                    self._cond.wait(left)
                self._idle -= 1
            try:
                self._send(held)
            except BaseException:
                # A bug (the receiver's faults are handled in _send): logged
                # with its traceback; the thread goes on with the next one.
                logger.exception("asyncwsgi: callback of task %s failed", held.delivery.task_id)
            finally:
                with self._cond:
                    self._lanes.done(held)
                    self._idle += 1
                    self._cond.notify_all()
                self._wake.set()

    # -- one delivery --------------------------------------------------------

    def _send(self, held: Held) -> None:
        delivery = held.delivery
        now = time.time()
        if now >= delivery.deadline or not delivery.url.isascii():
            # (A non-ASCII URL, stored before such URLs were refused, can
            # never be sent: given up at once.)
            logger.error(
                "asyncwsgi: gave up calling back task %s at %s after %d attempts",
                delivery.task_id,
                delivery.url,
                delivery.attempts,
            )
            self._record(delivery, None, held.claimed)
            return
        lapses = held.claimed + self.claim_lease
        if time.monotonic() + self.attempt_timeout + _SETTLE_MARGIN > lapses:
            # It waited too long: an attempt now could outlive the claim and
            # run beside another process's. Back to the store, due at once.
            self._record(delivery, now, held.claimed)
            return
        try:
            status: int | None = self.post(delivery)
        except ATTEMPT_FAULTS as exc:
            status = None
            logger.warning(
                "asyncwsgi: callback of task %s to %s failed: %s",
                delivery.task_id,
                delivery.url,
                exc or type(exc).__name__,
            )
        if status is not None and 200 <= status < 300:
            self._record(delivery, None, held.claimed)
            return
        if status is not None:
            logger.warning(
                "asyncwsgi: callback of task %s to %s answered %d",
                delivery.task_id,
                delivery.url,
                status,
            )
        retry_at = time.time() + backoff(delivery.attempts, self.max_backoff)
        self._record(delivery, min(retry_at, delivery.deadline), held.claimed)

    def _record(self, delivery: Delivery, retry_at: float | None, claimed: float) -> None:
        self._outcomes.record(delivery, retry_at, claimed + self.claim_lease)

    def post(self, delivery: Delivery) -> int:
        """One attempt, signed now: the receiver's status code (see
        :func:`asyncwsgi.callbacks.attempt.post`)."""
        return post_to(
            delivery.url,
            request(self.key, delivery),
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            attempt_timeout=self.attempt_timeout,
            tls=self._tls_context,
        )

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls
