"""RFC 7240 ``Prefer`` request headers, read leniently: a malformed
preference is ignored, never an error."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

from werkzeug.http import parse_list_header, unquote_header_value

__all__ = ["parse_prefer", "wait_seconds"]

_NONE: Mapping[str, str] = MappingProxyType({})


def parse_prefer(header: str | None) -> Mapping[str, str]:
    """Preferences by lower-cased name, values unquoted (``""`` when none).

    Several headers arrive joined by commas (PEP 3333); a preference given
    more than once counts the first time only (RFC 7240, section 2).
    Parameters after ``;`` are not used by asyncwsgi and are dropped.
    """
    if not header:
        return _NONE
    if len(header) > _CACHED_LENGTH:
        return _parse.__wrapped__(header)
    return _parse(header)


# Clients send the same few short headers ("wait=5", "respond-async") over
# and over; parsing one costs microseconds on the path of every such request.
# The answers are read-only, so one can be handed to every caller. Only short
# headers are kept, so that what the cache holds stays small whatever clients
# send.
_CACHED_LENGTH = 100


@lru_cache(maxsize=512)
def _parse(header: str) -> Mapping[str, str]:
    preferences: dict[str, str] = {}
    for item in parse_list_header(header):
        head = item.split(";", 1)[0]
        name, sep, value = head.partition("=")
        name = name.strip().lower()
        if not name or any(c in name for c in ' \t"(),/:<=>?@[\\]{}'):
            continue
        value = value.strip()
        if sep and not value:
            continue
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = unquote_header_value(value)
        preferences.setdefault(name, value)
    return MappingProxyType(preferences)


def wait_seconds(preferences: Mapping[str, str]) -> int | None:
    """The ``wait`` preference in whole seconds, or None when absent or not a
    non-negative integer."""
    value = preferences.get("wait")
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 12:
        return None
    return int(value)
