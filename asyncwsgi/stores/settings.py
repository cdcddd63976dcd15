"""The stores' own settings: which store takes each, and how a store URL sets it.

Each is also a middleware option (``asyncwsgi.options`` makes a row of the
options table from each), so Paste, ``asyncwsgi serve``, Flask and Django set
them like any other; in a store URL they are query parameters
(``sqlite:///tasks.db?busy_timeout=5``, ``redis://host/0?min_replicas=1``),
which the URL keeps, so a worker that opens the store by its URL gets them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = ["STORE_SETTINGS", "StoreSetting", "split_url", "store_keywords"]

_EVERY = ("memory", "sqlite", "redis")


@dataclass(frozen=True)
class StoreSetting:
    name: str
    #: A whole number (int) or seconds (float).
    kind: type[int] | type[float]
    #: The kinds of store that take it.
    stores: tuple[str, ...]
    #: The smallest value it may take.
    minimum: int = 0
    #: The store's keyword argument, when it is named otherwise there.
    keyword: str = ""
    #: One line, for ``asyncwsgi serve --help``.
    help: str = ""
    #: The whole meaning in Markdown, for docs/options.md.
    doc: str = ""

    def keyword_for(self) -> str:
        return self.keyword or self.name

    def convert(self, text: str) -> Any:
        """From a string (a URL's query, an ini file), checked."""
        return self.check(self.kind(text.strip()))

    def check(self, value: Any) -> Any:
        """The Python value, or a ValueError that says what is expected."""
        number = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, number) or value < self.minimum:
            what = "a whole number" if self.kind is int else "a number of seconds"
            raise ValueError(f"{self.name} must be {what} >= {self.minimum}, not {value!r}")
        return value


# fmt: off
STORE_SETTINGS: tuple[StoreSetting, ...] = (
    StoreSetting("max_tombstones", int, _EVERY,
                 help="tombstones (410 Gone of an expired task) a store keeps at most",
                 doc="tombstones (`410 Gone` of an expired task) a store keeps at most; "
                     "beyond them the oldest expired tasks answer `404`"),
    StoreSetting("tombstone_ttl", float, _EVERY,
                 help="seconds an expired task answers 410 before it is unknown (404)",
                 doc="seconds an expired task answers `410` before it is unknown (`404`)"),
    StoreSetting("busy_timeout", float, ("sqlite",), keyword="timeout",
                 help="SQLite: seconds a call waits for another process's write lock",
                 doc="SQLite: seconds a call waits for another process's write lock before "
                     "the store counts as unavailable (`503`)"),
    StoreSetting("chunk_size", int, ("redis",), minimum=1,
                 help="Redis: bytes per key of a spooled body",
                 doc="Redis: bytes per key of a spooled body (one script call per chunk); "
                     "every process that opens the store must use the same, which the "
                     "store's URL carries to workers"),
    StoreSetting("spool_ttl", float, ("redis",),
                 help="Redis: seconds a body being written lives without a new chunk",
                 doc="Redis: seconds a body being written lives without a new chunk, so "
                     "a writer that died leaves nothing behind for longer"),
    StoreSetting("local_copies", int, ("redis",),
                 help="Redis: bytes of large results this process keeps as local files "
                      "once replayed, to send them again with sendfile (0: none)",
                 doc="Redis: bytes of large results (more than one chunk) that each web "
                     "process keeps as files of its own once it replayed them, so that "
                     "the next replays go to the server's `sendfile` instead of through "
                     "Python from Redis; 0 (the default) keeps none "
                     "([large results](results.md#local-copies))"),
    StoreSetting("min_replicas", int, ("redis",),
                 help="Redis: replicas that must confirm a write before it counts",
                 doc="Redis: replicas that must confirm a write before it counts (for a "
                     "primary with replicas; see [stores](stores.md))"),
    StoreSetting("replica_timeout", float, ("redis",),
                 help="Redis: seconds a write waits for min_replicas before it is a 503",
                 doc="Redis: seconds a write waits for `min_replicas` confirmations (1 by "
                     "default) before the submission is a `503` or the result is retried"),
)
# fmt: on

_BY_NAME: Mapping[str, StoreSetting] = {s.name: s for s in STORE_SETTINGS}


def kind_of(url: str) -> str:
    """``memory``, ``sqlite`` or ``redis`` for a store URL's scheme."""
    scheme = url.partition(":")[0].lower()
    if scheme in (
        "redis",
        "rediss",
        "unix",
        "redis+cluster",
        "rediss+cluster",
        "redis+sentinel",
        "rediss+sentinel",
    ):
        return "redis"
    return scheme


def split_url(url: str) -> tuple[str, dict[str, Any]]:
    """The URL without the settings in its query, and those settings converted
    (a bad value is a ValueError naming it). Other parameters stay (Redis's
    own, such as ``db=`` or ``prefix=``)."""
    # Split by hand: urlunsplit() would turn sqlite:////abs/path into sqlite://abs/path.
    base, _, query = url.partition("?")
    if not query:
        return url, {}
    found: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, text in parse_qsl(query, keep_blank_values=True):
        setting = _BY_NAME.get(name)
        if setting is None:
            rest.append((name, text))
            continue
        try:
            found[name] = setting.convert(text)
        except ValueError as exc:
            raise ValueError(f"store URL parameter {name}={text!r}: {exc}") from exc
    return (f"{base}?{urlencode(rest)}" if rest else base), found


def store_keywords(kind: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The store's keyword arguments for ``settings`` (by option name, None
    meaning the store's default); a setting this kind of store does not take
    is a ValueError that says which stores do."""
    keywords: dict[str, Any] = {}
    for name, value in settings.items():
        if value is None:
            continue
        setting = _BY_NAME[name]
        if kind not in setting.stores:
            raise ValueError(
                f"{name} is a setting of the {' and '.join(setting.stores)} store"
                f"{'s' if len(setting.stores) > 1 else ''}, not of the {kind} store"
            )
        keywords[setting.keyword_for()] = value
    return keywords
