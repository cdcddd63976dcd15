"""Redis Sentinel store URLs: a client of the current primary, found through
the sentinels, that follows a failover by itself.

``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<service>[/<db>]``
names the sentinels (port 26379 when none is given), the service they
watch (the name of ``sentinel monitor``) and the database; ``rediss+sentinel://``
speaks TLS to the sentinels and to Redis. The query takes redis-py's
connection options (``socket_timeout=2``, ``ssl_ca_certs=...``), converted as
redis-py converts them in a ``redis://`` URL; ``password=``/``username=``
there or in the userinfo are Redis's, ``sentinel_password=`` and
``sentinel_username=`` the sentinels' own (they have none by default). The
sentinels get the ``socket_*`` and ``ssl*`` options too.

>>> client = sentinel_client("redis+sentinel://10.0.0.1,10.0.0.2/tasks/0")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis import connection as _connection
from redis.sentinel import Sentinel, SentinelConnectionPool

__all__ = ["SCHEMES", "SentinelURL", "close_sentinels", "parse_sentinel_url", "sentinel_client"]

SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 26379

# Options of the URL that are the sentinels' alone (without the prefix).
_SENTINEL_ONLY = ("sentinel_password", "sentinel_username")


@dataclass(frozen=True)
class SentinelURL:
    """What a ``redis+sentinel://`` URL says."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    #: For the connections to Redis (the primary), as redis-py names them.
    connection: dict[str, Any] = field(default_factory=dict)
    #: For the connections to the sentinels.
    sentinel: dict[str, Any] = field(default_factory=dict)


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.split(","):
        item = item.strip()
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise ValueError(f"a sentinel without a host in {netloc!r}")
        if port and not port.isdigit():
            raise ValueError(f"the sentinel {item!r} has no valid port")
        hosts.append((unquote(host), int(port) if port else DEFAULT_PORT))
    return hosts


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of a ``redis+sentinel://`` or ``rediss+sentinel://`` URL; a
    ValueError that says what is wrong with one that is not well formed."""
    scheme, separator, _ = url.partition("://")
    if not separator or scheme.lower() not in SCHEMES:
        raise ValueError(f"not a Redis Sentinel URL: {url!r}")
    parts = urlsplit(url)
    # The userinfo is Redis's; the hosts are every sentinel, comma-separated.
    userinfo, _, netloc = parts.netloc.rpartition("@")
    if not netloc:
        raise ValueError(f"a Sentinel URL names at least one sentinel: {url!r}")
    path = [unquote(piece) for piece in parts.path.split("/") if piece]
    if not path or len(path) > 2:
        raise ValueError(
            f"a Sentinel URL's path is /<service name>[/<db>], not {parts.path!r}: "
            f"redis+sentinel://host:26379/mymaster/0"
        )
    service = path[0]
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"the database in a Sentinel URL is a number, not {path[1]!r}")
    db = int(path[1]) if len(path) == 2 else 0

    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {name: value for name, value in query if name in _SENTINEL_ONLY}
    rest = [(name, value) for name, value in query if name not in _SENTINEL_ONLY]
    # redis-py's own conversion of its options (floats, flags, ...): the URL
    # reads as a redis:// URL would, the hosts aside.
    plain = "rediss" if scheme.lower().startswith("rediss") else "redis"
    auth = f"{userinfo}@" if userinfo else ""
    parse_url: Any = _connection.parse_url  # (unannotated in some redis-py releases)
    connection: dict[str, Any] = parse_url(f"{plain}://{auth}localhost/?{urlencode(rest)}")
    for name in ("host", "port", "path", "connection_class"):
        connection.pop(name, None)
    if "db" in connection and connection["db"] != db:
        raise ValueError("the Sentinel URL's path and its db= name different databases")
    connection["db"] = db
    if plain == "rediss":
        connection["ssl"] = True

    sentinel = {
        name: value
        for name, value in connection.items()
        if name.startswith(("socket_", "ssl")) or name == "protocol"
    }
    if "sentinel_password" in own:
        sentinel["password"] = own["sentinel_password"]
    if "sentinel_username" in own:
        sentinel["username"] = own["sentinel_username"]
    return SentinelURL(_hosts(netloc), service, db, connection, sentinel)


def sentinel_client(url: str, **defaults: Any) -> redis.Redis:
    """A client of the primary of the URL's service, with ``defaults`` under
    the URL's own options (``socket_timeout`` and such, for both the
    sentinels and Redis). Close it with :func:`close_sentinels`."""
    parsed = parse_sentinel_url(url)
    connection = {**defaults, **parsed.connection}
    sentinel_kwargs = {
        **{k: v for k, v in defaults.items() if k.startswith("socket_")},
        **parsed.sentinel,
    }
    # (Through Any: redis-py before 6 leaves the Sentinel API unannotated.)
    sentinel: Any = Sentinel
    manager = sentinel(parsed.sentinels, sentinel_kwargs=sentinel_kwargs)
    client: redis.Redis = manager.master_for(
        parsed.service, redis_class=redis.Redis, decode_responses=False, **connection
    )
    return client


def close_sentinels(client: Any) -> None:
    """Close the connections to the sentinels of a client made by
    :func:`sentinel_client` (closing the client closes those to Redis);
    nothing for any other client."""
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            sentinel.close()
