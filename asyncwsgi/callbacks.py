"""Completion callbacks: one signed ``POST`` to a task's ``Callback-URL`` when it ends.

The body is ``{"id", "status_url", "status", "finished"}``, signed as the
Standard Webhooks specification says: headers ``webhook-id`` (the task id,
the same on every retry), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256, keyed by the
``whsec_`` secret, of ``{id}.{timestamp}.{body}``). A receiver checks it with
any Standard Webhooks library, for instance::

    from standardwebhooks.webhooks import Webhook
    notice = Webhook(secret).verify(body, headers)

The store holds each delivery due (written when the task finishes, whoever
finishes it) and hands it to one process at a time (a claim), so several
processes sharing a store send it once. A failed attempt (an error status, a
redirect, which is never followed, a refused or timed out connection) is
tried again after 1 s, 2 s, 4 s... (at most ``max_backoff``) until the
result expires: past that the receiver could not fetch it anyway.

Each attempt has one deadline for everything (connecting, sending, reading
the status line), whatever the receiver does: one that answers a byte a
second is cut off at the deadline like one that never answers. An attempt
starts only if it can end, and be recorded, before its claim lapses, so a
live process never has two attempts of one delivery under way. Receivers are
kept apart by origin (scheme, host, port): a bound per origin, at most
``per_origin`` attempts at once and as many waiting, so slow receivers hold
a few of the sending threads and never all of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import SplitResult, unquote, urlsplit

from .stores.base import Store, StoreUnavailable
from .task import Delivery

__all__ = ["CallbackSender", "allowed_callback", "check_allow_list", "parse_secret", "sign"]

logger = logging.getLogger("asyncwsgi")

_SECRET_PREFIX = "whsec_"


def parse_secret(secret: str) -> bytes:
    """The key of a Standard Webhooks secret: ``whsec_`` and base64."""
    if not secret.startswith(_SECRET_PREFIX):
        raise ValueError("callback_secret must be a Standard Webhooks secret: 'whsec_' + base64")
    try:
        key = base64.b64decode(secret[len(_SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("callback_secret: the part after 'whsec_' is not base64") from None
    if len(key) < 24:
        raise ValueError(
            "callback_secret: use at least 24 random bytes (the specification's minimum)"
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for one message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def check_allow_list(prefixes: Iterable[str]) -> list[str]:
    """The prefixes of ``callback_allow``, each checked to name at least a whole
    origin and a path (``https://hooks.example.com/``): a prefix that stopped
    inside the host name would also allow ``hooks.example.com.evil.test``."""
    checked = []
    for prefix in prefixes:
        parts = urlsplit(prefix)
        if parts.scheme not in ("http", "https") or not parts.netloc or not parts.path:
            raise ValueError(
                f"callback_allow: {prefix!r} must be an http(s) URL with a path, "
                "such as 'https://hooks.example.com/'"
            )
        checked.append(prefix)
    return checked


def allowed_callback(url: str, prefixes: list[str]) -> bool:
    """Whether ``url`` may be called back: an absolute http(s) URL in printable
    ASCII (non-ASCII must come percent-encoded, as RFC 3986 writes it),
    without credentials, fragment, backslash or dot segment, under one of
    ``prefixes``."""
    if not url.isascii() or not url.isprintable() or " " in url or "\\" in url:
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        return False
    if "@" in parts.netloc or parts.fragment or "#" in url:
        return False
    if _leaves_its_path(parts.path):
        return False
    return any(url.startswith(prefix) for prefix in prefixes)


def _leaves_its_path(path: str) -> bool:
    """Whether a receiver could resolve ``path`` outside itself: a dot
    segment (or a backslash, which WHATWG URL parsers read as a slash) in
    any decoding of it, since a receiver or a proxy before it may decode
    %2e, %5c or %2f once or more; a ";" ends a segment for servers that
    take path parameters ("..;" is ".." to them)."""
    while True:
        if "\\" in path:
            return True
        if any(segment.split(";", 1)[0] in (".", "..") for segment in path.split("/")):
            return True
        decoded = unquote(path)
        if decoded == path:
            return False
        path = decoded


def backoff(attempts: int, cap: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 1, 2, 4..."""
    return float(min(cap, 2 ** min(attempts, 30)))


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# What an attempt can fail of: the network (OSError: refused, reset, timed
# out, TLS, name resolution) or a receiver that does not speak HTTP
# (ValueError). Anything else is a bug, logged with its traceback.
_ATTEMPT_FAULTS = (OSError, ValueError)
_STATUS_LINE = re.compile(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})(?: [^\r\n]*)?\r?")
# The status line and interim responses must come within this many bytes.
_MAX_HEAD = 65536
# Time kept between an attempt's deadline and its claim's end, to record it.
_SETTLE_MARGIN = 1.0
# An idle sending thread ends after this many seconds.
_IDLE = 5.0
# Deliveries a process holds at once, per sending thread: those waiting for
# a thread cost a few hundred bytes each, and slow receivers must not hold
# every claim (each origin holds at most 2 * per_origin).
_CLAIMS_PER_THREAD = 4


@dataclass(slots=True)
class _Held:
    """A delivery this process claimed, and when (monotonic seconds)."""

    delivery: Delivery
    origin: str
    claimed: float


class _Origin:
    """One receiver's deliveries: those waiting, and how many are being sent."""

    __slots__ = ("sending", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[_Held] = deque()
        self.sending = 0


def origin_of(url: str) -> str:
    """The receiver a URL names, as RFC 6454 counts them: scheme, host, port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


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
        self._cond = threading.Condition()
        self._origins: dict[str, _Origin] = {}
        self._held = 0  # claimed and not yet settled: waiting or being sent
        self._senders: set[threading.Thread] = set()
        self._idle = 0  # sending threads waiting for work
        self._serial = 0
        self._stop = threading.Event()
        # Set when a sending thread finishes one: a place may be free.
        self._wake = threading.Event()
        self._probed = 0.0
        self._claimer: threading.Thread | None = None
        # Deliveries sent (or given up) whose record the store did not take
        # before their claim lapsed: forgotten when claimed again, not resent.
        self._unrecorded: dict[str, float] = {}
        self._tls: ssl.SSLContext | None = None

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
            waiting = [held for origin in self._origins.values() for held in origin.waiting]
            for origin in self._origins.values():
                origin.waiting.clear()
            self._held -= len(waiting)
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
            room = _CLAIMS_PER_THREAD * self.workers - self._held
            busiest = max((o.sending + len(o.waiting) for o in self._origins.values()), default=0)
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
                if self._unrecorded.pop(delivery.task_id, None) is not None:
                    recorded.append(delivery)
                    continue
                origin = origin_of(delivery.url)
                queue = self._origins.setdefault(origin, _Origin())
                if queue.sending + len(queue.waiting) >= cap:
                    refused.append(delivery)
                    continue
                queue.waiting.append(_Held(delivery, origin, claimed))
                self._held += 1
            self._spawn()
            self._cond.notify_all()
            self._prune_unrecorded()
        for delivery in recorded:
            self._record(delivery, None, claimed)
        for delivery in returned:
            self._record(delivery, time.time(), claimed)
        for delivery in refused:
            retry_at = time.time() + backoff(delivery.attempts, self.max_backoff)
            self._record(delivery, min(retry_at, delivery.deadline), claimed)
        return len(deliveries) == limit and not refused and limit < room

    def _prune_unrecorded(self) -> None:
        # Called with the lock held. Bounded: past its deadline a delivery is
        # dropped by whoever holds it, and a live process has few such.
        now = time.time()
        for task_id in [t for t, deadline in self._unrecorded.items() if deadline < now]:
            del self._unrecorded[task_id]

    # -- sending -------------------------------------------------------------

    def _spawn(self) -> None:
        """Start sending threads for the work that can start now (called
        with the lock held)."""
        ready = sum(
            min(len(o.waiting), self.per_origin - o.sending) for o in self._origins.values()
        )
        while self._idle < ready and len(self._senders) < self.workers:
            self._serial += 1
            thread = threading.Thread(
                target=self._send_loop, name=f"asyncwsgi-callback-{self._serial}", daemon=True
            )
            self._senders.add(thread)
            self._idle += 1  # counted idle until it takes its first delivery
            thread.start()

    def _next(self) -> _Held | None:
        """The next delivery whose origin has a free place, origins taken in
        turn (called with the lock held)."""
        for name, origin in self._origins.items():
            if origin.waiting and origin.sending < self.per_origin:
                held = origin.waiting.popleft()
                origin.sending += 1
                # To the back of the line: the next one goes to another origin.
                del self._origins[name]
                self._origins[name] = origin
                return held
        return None

    def _send_loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                idle_until = time.monotonic() + _IDLE
                held = None
                while held is None:
                    held = None if self._stop.is_set() else self._next()
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
                    origin = self._origins.get(held.origin)
                    if origin is not None:
                        origin.sending -= 1
                        if not origin.sending and not origin.waiting:
                            del self._origins[held.origin]
                    self._held -= 1
                    self._idle += 1
                    self._cond.notify_all()
                self._wake.set()

    # -- one delivery --------------------------------------------------------

    def _send(self, held: _Held) -> None:
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
        except _ATTEMPT_FAULTS as exc:
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
        # Until the store takes it, or the claim lapses (another process may
        # have taken the delivery over): a record lost to an outage would
        # have the callback sent again.
        give_up = claimed + self.claim_lease
        delay = 0.1
        while True:
            try:
                self.store.settle_callback(delivery, retry_at)
                return
            except StoreUnavailable:
                if time.monotonic() + delay > give_up or self._stop.is_set():
                    logger.error(
                        "asyncwsgi: could not record the callback of task %s: "
                        "the store is unavailable",
                        delivery.task_id,
                    )
                    if retry_at is None:
                        # Sent (or given up): if this process claims it again,
                        # it is forgotten instead of sent twice.
                        with self._cond:
                            self._unrecorded[delivery.task_id] = delivery.deadline
                    return
                logger.warning("asyncwsgi: the store is unavailable; retrying a callback's record")
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def body(self, delivery: Delivery) -> bytes:
        notice = {
            "id": delivery.task_id,
            "status_url": delivery.status_url,
            "status": delivery.status,
            "finished": _iso(delivery.finished),
        }
        return json.dumps(notice, separators=(",", ":")).encode()

    def request(self, delivery: Delivery, parts: SplitResult) -> bytes:
        """The attempt's bytes: an HTTP/1.1 POST, closed after its answer."""
        body = self.body(delivery)
        timestamp = int(time.time())
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = (
            f"POST {target} HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "User-Agent: asyncwsgi\r\n"
            "Connection: close\r\n"
            f"webhook-id: {delivery.task_id}\r\n"
            f"webhook-timestamp: {timestamp}\r\n"
            f"webhook-signature: {sign(self.key, delivery.task_id, timestamp, body)}\r\n"
            "\r\n"
        )
        return head.encode("ascii") + body

    def post(self, delivery: Delivery) -> int:
        """One attempt: the receiver's status code (a redirect is not
        followed). Everything, connecting to reading the status line, ends
        within ``attempt_timeout``; raises OSError (TimeoutError past it) or
        ValueError (an answer that is not HTTP)."""
        started = time.monotonic()
        deadline = started + self.attempt_timeout
        parts = urlsplit(delivery.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        message = self.request(delivery, parts)
        sock = _connect(host, port, min(deadline, started + self.connect_timeout))
        try:
            if parts.scheme == "https":
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                sock.settimeout(_left(deadline))
                sock = self._tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(_left(deadline))
            sock.sendall(message)
            return _read_status(sock, min(deadline, time.monotonic() + self.read_timeout))
        finally:
            sock.close()


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; TimeoutError once it has passed (a socket
    timeout of 0 would mean "do not block", not "no time left")."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's deadline passed")
    return left


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    """A connection to one of ``host``'s addresses, all tried by ``deadline``.
    (Name resolution is the system resolver's, bounded by its own timeouts.)"""
    error: OSError = TimeoutError("the attempt's deadline passed")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_left(deadline))
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def _read_status(sock: socket.socket, deadline: float) -> int:
    """The status code of the final response (interim 1xx ones skipped), read
    by ``deadline`` however slowly the bytes come; the rest is not read."""
    data = b""
    while True:
        line, newline, _ = data.partition(b"\n")
        if newline:
            match = _STATUS_LINE.fullmatch(line)
            if match is None:
                raise ValueError("the receiver's answer is not an HTTP/1.x response")
            status = int(match.group(1))
            if status >= 200:
                return status
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                data = data[end + 4 :]
                continue
        if len(data) > _MAX_HEAD:
            raise ValueError("no status line in the receiver's first 64 KiB")
        sock.settimeout(_left(deadline))
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the receiver closed the connection before answering")
        data += chunk
