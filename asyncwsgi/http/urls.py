"""Status URLs: what ``Location`` and every ``status_url`` say."""

from __future__ import annotations

import functools
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["StatusURLs"]

# What may stay as it is in a path (RFC 3986 pchar and "/"); "%" is not in
# it: SCRIPT_NAME is already decoded, so a "%" there is a real percent sign.
_PATH_SAFE = "/!$&'()*+,;=:@"


class StatusURLs:
    """``urls(environ, task_id)``: the task's status URL, ``SCRIPT_NAME`` +
    ``status_path`` + id, percent-encoded as a URI reference (a mount such as
    ``/my app`` or a non-ASCII one is sent as ``/my%20app``), after
    ``location_base`` when that is set. Never built from the request's
    ``Host``, which the client chooses."""

    def __init__(self, status_path: str, location_base: str | None) -> None:
        self.status_path = status_path
        self.location_base = location_base

    def __call__(self, environ: WSGIEnvironment, task_id: str) -> str:
        # Task ids are URL-safe already: only the prefix needs encoding.
        location = _quoted(environ.get("SCRIPT_NAME", "") + self.status_path) + task_id
        return location if self.location_base is None else self.location_base + location


@functools.lru_cache(maxsize=64)
def _quoted(path: str) -> str:
    """``path`` percent-encoded as a URI reference; cached, as a service has
    a handful of mounts and every 202 needs one."""
    try:
        raw = path.encode("latin-1")  # a WSGI string: the bytes the server got
    except UnicodeEncodeError:
        raw = path.encode("utf-8")  # set by an outer middleware as text
    return urllib.parse.quote(raw, safe=_PATH_SAFE)
