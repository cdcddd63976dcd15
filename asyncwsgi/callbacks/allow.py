"""Which URLs may be called back (``callback_allow``), and the receiver, or
origin, each one names."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

__all__ = ["allowed_callback", "check_allow_list", "origin_of"]


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


def origin_of(url: str) -> str:
    """The receiver a URL names, as RFC 6454 counts them: scheme, host, port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"
