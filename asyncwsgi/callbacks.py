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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit

from .stores.base import Store
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


class CallbackSender:
    """Sends the completion callbacks due in ``store``, signed with ``key``.

    One thread claims due deliveries (every ``poll`` seconds) for ``workers``
    sending threads; each attempt connects within ``connect_timeout`` and
    must be answered within ``read_timeout``. A claim lasts ``claim_lease``
    seconds, longer than any attempt: a process that dies holding one leaves
    it to another after that. Every step survives its own failure (a store
    that is down, a receiver that hangs): the threads log it and go on.
    """

    def __init__(
        self,
        store: Store,
        key: bytes,
        *,
        workers: int = 4,
        poll: float = 0.25,
        connect_timeout: float = 3.0,
        read_timeout: float = 5.0,
        max_backoff: float = 60.0,
        claim_lease: float = 60.0,
    ) -> None:
        self.store = store
        self.key = key
        self.workers = workers
        self.poll = poll
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_backoff = max_backoff
        self.claim_lease = claim_lease
        self._queue: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._busy = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        threads = [
            threading.Thread(target=self._claim_loop, name="asyncwsgi-callbacks", daemon=True)
        ]
        threads += [
            threading.Thread(target=self._send_loop, name=f"asyncwsgi-callback-{i}", daemon=True)
            for i in range(self.workers)
        ]
        self._threads = threads
        for thread in threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming; deliveries under way finish their attempt (within
        ``timeout``); those only claimed return to the store when their claim
        lapses."""
        self._stop.set()
        for _ in range(self.workers):
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- the threads -------------------------------------------------------

    def _claim_loop(self) -> None:
        delay = self.poll
        while not self._stop.wait(delay):
            with self._lock:
                free = self.workers - self._busy
            if free <= 0:
                continue
            try:
                deliveries = self.store.claim_callbacks(time.time(), self.claim_lease, free)
            except Exception:
                # The store is down: try again, less often, until it is back.
                logger.exception("asyncwsgi: could not claim completion callbacks")
                delay = min(delay * 2, 5.0)
                continue
            delay = self.poll
            with self._lock:
                self._busy += len(deliveries)
            for delivery in deliveries:
                self._queue.put(delivery)

    def _send_loop(self) -> None:
        while True:
            delivery = self._queue.get()
            if delivery is None:
                return
            try:
                self._send(delivery)
            except BaseException:
                logger.exception("asyncwsgi: callback of task %s failed", delivery.task_id)
            finally:
                with self._lock:
                    self._busy -= 1

    # -- one delivery --------------------------------------------------------

    def _send(self, delivery: Delivery) -> None:
        now = time.time()
        if now >= delivery.deadline:
            logger.error(
                "asyncwsgi: gave up calling back task %s at %s after %d attempts",
                delivery.task_id,
                delivery.url,
                delivery.attempts,
            )
            self._settle(delivery, None)
            return
        try:
            status = self.post(delivery)
        except Exception as exc:
            status = None
            logger.warning(
                "asyncwsgi: callback of task %s to %s failed: %s",
                delivery.task_id,
                delivery.url,
                exc,
            )
        if status is not None and 200 <= status < 300:
            self._settle(delivery, None)
            return
        if status is not None:
            logger.warning(
                "asyncwsgi: callback of task %s to %s answered %d",
                delivery.task_id,
                delivery.url,
                status,
            )
        retry_at = time.time() + backoff(delivery.attempts, self.max_backoff)
        self._settle(delivery, min(retry_at, delivery.deadline))

    def _settle(self, delivery: Delivery, retry_at: float | None) -> None:
        # Until the store takes it (or the claim lapses, when another process
        # may have taken the delivery over): a settle lost to an outage would
        # send the callback again.
        give_up = time.monotonic() + self.claim_lease
        delay = 0.1
        while True:
            try:
                self.store.settle_callback(delivery, retry_at)
                return
            except Exception:
                if time.monotonic() > give_up or self._stop.is_set():
                    logger.exception(
                        "asyncwsgi: could not record the callback of task %s", delivery.task_id
                    )
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

    def post(self, delivery: Delivery) -> int:
        """One attempt: the receiver's status code (a redirect is not followed)."""
        parts = urlsplit(delivery.url)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname or "",
                parts.port,
                timeout=self.connect_timeout,
                context=ssl.create_default_context(),
            )
        else:
            connection = http.client.HTTPConnection(
                parts.hostname or "", parts.port, timeout=self.connect_timeout
            )
        body = self.body(delivery)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "asyncwsgi",
            "Connection": "close",
            "webhook-id": delivery.task_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.key, delivery.task_id, timestamp, body),
        }
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        try:
            connection.connect()
            if connection.sock is not None:
                connection.sock.settimeout(self.read_timeout)
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read(65536)  # a little of the answer, never all of it
            return response.status
        finally:
            connection.close()
