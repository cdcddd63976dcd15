"""Ready-made ``owner`` callables: who may see a task.

With ``AsyncMiddleware(app, owner=...)`` a task is bound to what the callable
returns for the submitting request, and its status URL answers only requests
for which it returns the same value (others get 404, as for an unknown id).
The store keeps a SHA-256 of the value, never the value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from werkzeug.http import parse_cookie

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["by_cookie", "by_header", "by_remote_user", "owner_hash"]

Owner = Callable[["WSGIEnvironment"], "str | None"]


def by_header(name: str = "Authorization") -> Owner:
    """The value of a request header, such as ``Authorization`` or ``X-Api-Key``."""
    key = "HTTP_" + name.upper().replace("-", "_")
    if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        key = key[5:]

    def owner(environ: WSGIEnvironment) -> str | None:
        return environ.get(key) or None

    owner.__name__ = f"by_header({name!r})"
    return owner


def by_cookie(name: str) -> Owner:
    """The value of a cookie, such as a session cookie."""

    def owner(environ: WSGIEnvironment) -> str | None:
        header = environ.get("HTTP_COOKIE")
        if not header:
            return None
        return parse_cookie(header).get(name) or None

    owner.__name__ = f"by_cookie({name!r})"
    return owner


def by_remote_user(environ: WSGIEnvironment) -> str | None:
    """``REMOTE_USER``, as set by the server or an authentication middleware."""
    value = environ.get("REMOTE_USER")
    return value or None


def owner_hash(value: str) -> str:
    digest = hashlib.sha256(b"asyncwsgi-owner\x00" + value.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
