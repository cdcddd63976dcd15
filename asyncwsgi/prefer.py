"""RFC 7240 ``Prefer`` request headers, read leniently: a malformed
preference is ignored, never an error."""

from __future__ import annotations

from werkzeug.http import parse_list_header, unquote_header_value

__all__ = ["parse_prefer", "wait_seconds"]


def parse_prefer(header: str | None) -> dict[str, str]:
    """Preferences by lower-cased name, values unquoted (``""`` when none).

    Several headers arrive joined by commas (PEP 3333); a preference given
    more than once counts the first time only (RFC 7240, section 2).
    Parameters after ``;`` are not used by asyncwsgi and are dropped.
    """
    preferences: dict[str, str] = {}
    if not header:
        return preferences
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
    return preferences


def wait_seconds(preferences: dict[str, str]) -> int | None:
    """The ``wait`` preference in whole seconds, or None when absent or not a
    non-negative integer."""
    value = preferences.get("wait")
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 12:
        return None
    return int(value)
