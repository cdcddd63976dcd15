"""The Redis store: one task table shared by every process and machine that
opens the same Redis.

Needs redis-py (``pip install redis``) and Redis 6.2 or later.

The store takes a client or a URL: ``redis://[[user]:password@]host[:port][/db]``,
``rediss://`` for TLS, ``unix:///path/to/redis.sock?db=0``,
``redis+cluster://host:port/`` or ``rediss+cluster://`` naming any node of a
cluster, ``redis+sentinel://`` (see :mod:`.sentinel`). A ``prefix=`` query
parameter sets the prefix, and the store's own settings (``chunk_size=``,
``min_replicas=``...) may be query parameters too.

Layout, under ``prefix`` (``asyncwsgi:`` by default). A task pays only for
what it uses: each key below marked "only" is written for the tasks that use
that feature, and nothing else is (``tests/test_redis_commands.py`` pins the
commands of a task cycle with every feature off, and what each one adds).

``task:<id>``
    a hash: the record, the result's status, headers (JSON) and body (bytes),
    and what the task uses (``listed``, ``key``, ``request_body``,
    ``spooling``; ``waited`` and ``watched`` once someone waits or watches).
    Kept without expiry while the task is queued or running; from its finish
    on it expires after the record's ``ttl``. A read is one ``HGETALL``.
``leases``
    a sorted set of the queued and running ids by the end of their lease
    (``inf`` for none): the count that ``max_pending`` bounds, and the lapsed
    leases that the lease rule ends.
``tomb:<id>`` / ``tombs``
    only with tombstones (``max_tombstones`` and ``tombstone_ttl`` above 0):
    the finished ids by expiry, to keep at most ``max_tombstones`` of them,
    each a tombstone for ``tombstone_ttl`` seconds after ``task:<id>``
    expired, so a poll after the result expired gets 410 rather than 404;
    and, for a task with an owner, the key that holds its owner hash,
    written at the finish, expiring as its tombstone ends.
``key:<key>``
    only with an Idempotency-Key: ``[task id, fingerprint]`` as JSON, bound
    when the task is created; it expires with its task.
``done:<id>``
    only for a task someone waits for (``Prefer: wait``): a list pushed to
    when it finishes or is deleted; :meth:`RedisStore.wait` blocks on it
    (``BLMOVE`` of the list onto itself, so every waiter wakes).
``changed:<id>``
    only for a task an event stream watches: a pub/sub channel published to
    on every change of its state or progress; :meth:`RedisStore.watch`
    listens.
``body:<id>:request`` / ``body:<id>:result``
    only for a body above the middleware's ``spool_threshold``: a list of
    chunks of ``chunk_size`` bytes (1 MiB), never one value near Redis's
    limits. A request body lives until its task finishes, a result as long
    as its task.
``bodies`` / ``bodies:until`` / ``stored``
    the ledger of spooled bodies (``<id>:<kind>`` to bytes), when each is due
    to go (its task's expiry, or a writer's ``spool_ttl`` that each chunk
    renews: a writer that died), and their total, which ``max_stored_bytes``
    bounds. Bodies past their time are removed (and their bytes given back)
    by the next write that counts against a budget, or by the janitor.
``list:<owner>:<state>`` / ``list:<owner>:all`` / ``unlist``
    only for the tasks created while a middleware's task list is on
    (:attr:`~asyncwsgi.stores.base.Store.listing`): sorted sets by creation
    time, per owner hash (empty for none); a finished task is also in
    ``unlist`` (by its expiry, as ``<owner>|<id>``), from which it leaves the
    index when it expires.
``cb:<id>`` / ``callbacks``
    only for a task with a Callback-URL: the callback still to send (a hash),
    and the sorted set of them by when each is due; claiming one pushes its
    due time past the claim.
``wait``
    only with ``min_replicas``: written (and expiring after a minute) before
    each ``WAIT``, so that the ``WAIT`` covers everything the primary held,
    even after a step that wrote nothing (see :mod:`.replicas`).

Bodies live in Redis rather than in a directory the machines share: Redis is
already the one thing every web process and worker reaches, its own key
expiry removes what a crashed process left, and Redis Cluster keeps them in
the table's slot; the price is Redis's memory, which ``max_stored_bytes``
bounds (set it below ``maxmemory``).

Every change of state is one Lua script (``lua/<step>.lua``), so it is atomic
across processes.
Times are the clients' clocks (``Store.clock``, ``time.time()`` unless set), like
every other store, except the expiry of keys, which is the server's: keep
the machines' clocks in sync. On a Redis Cluster (a ``RedisCluster`` client,
or a ``redis+cluster://`` URL) the prefix must carry a hash tag
(``{asyncwsgi}:``), so that every key of the table lives in one slot and each
script runs on one node; a prefix without one is refused.

>>> store = RedisStore.from_url("redis://localhost:6379/0")
>>> app = AsyncMiddleware(app, paths=["/reports/*"], store=store)
"""

from __future__ import annotations

from .bodies import RedisBody, RedisSink
from .store import RedisStore

__all__ = ["RedisBody", "RedisSink", "RedisStore"]
