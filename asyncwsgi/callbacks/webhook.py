"""What a completion callback sends, as the Standard Webhooks specification
writes it: the ``whsec_`` secret, the signature, the notice and the request
that carries them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ..task import Delivery

__all__ = ["notice", "parse_secret", "request", "sign"]

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


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def notice(delivery: Delivery) -> bytes:
    """The body: ``{"id", "status_url", "status", "finished"}``."""
    document = {
        "id": delivery.task_id,
        "status_url": delivery.status_url,
        "status": delivery.status,
        "finished": _iso(delivery.finished),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def request(key: bytes, delivery: Delivery) -> bytes:
    """One attempt's bytes: an HTTP/1.1 POST, signed now, closed after its answer."""
    parts = urlsplit(delivery.url)
    body = notice(delivery)
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
        f"webhook-signature: {sign(key, delivery.task_id, timestamp, body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body
