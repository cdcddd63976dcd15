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

By job: ``allow`` (which URLs may be called back), ``webhook`` (the secret,
the signature and the request), ``attempt`` (one POST within its deadline),
``lanes`` (the deliveries held, by receiver), ``outcomes`` (each outcome
recorded in the store), ``sender`` (the claiming and sending threads).
"""

from __future__ import annotations

from .allow import allowed_callback, check_allow_list, origin_of
from .sender import CallbackSender, backoff
from .webhook import parse_secret, sign

__all__ = [
    "CallbackSender",
    "allowed_callback",
    "backoff",
    "check_allow_list",
    "origin_of",
    "parse_secret",
    "sign",
]
