"""The Redis store: one task table shared by every process and machine that
opens the same Redis.

Needs redis-py (``pip install redis``) and Redis 6.2 or later.

Layout, under ``prefix`` (``asyncwsgi:`` by default):

``task:<id>``
    a hash: the record, the result's status, headers (JSON) and body (bytes).
    Kept without expiry while the task is queued or running; from its finish
    on it expires after the record's ``ttl``.
``tomb:<id>``
    the tombstone (its value is the owner hash): written at the finish,
    it outlives ``task:<id>`` by ``tombstone_ttl`` seconds, so a poll after the
    result expired gets 410 rather than 404.
``active`` / ``leases`` / ``tombs``
    sorted sets: queued and running ids (by creation), running ids (by lease
    end), finished ids (by expiry, to bound the tombstones to ``max_tombstones``).
``key:<key>``
    an idempotency key: ``[task id, fingerprint]`` as JSON, bound when the
    task is created; it expires with its task.
``done:<id>``
    a list pushed to when the task finishes or is deleted; :meth:`RedisStore.wait`
    blocks on it (``BLMOVE`` of the list onto itself, so every waiter wakes).
``body:<id>:request`` / ``body:<id>:result``
    a body above the middleware's ``spool_threshold``: a list of chunks of
    ``chunk_size`` bytes (1 MiB), never one value near Redis's limits. A
    request body lives until its task finishes, a result as long as its task.
``bodies`` / ``bodies:until`` / ``stored``
    the ledger of spooled bodies (``<id>:<kind>`` to bytes), when each is due
    to go (its task's expiry, or a writer's ``spool_ttl`` that each chunk
    renews: a writer that died), and their total, which ``max_stored_bytes``
    bounds. Bodies past their time are removed (and their bytes given back)
    by the next write that counts bytes.

Bodies live in Redis rather than in a directory the machines share: Redis is
already the one thing every web process and worker reaches, its own key
expiry removes what a crashed process left, and Redis Cluster keeps them in
the table's slot; the price is Redis's memory, which ``max_stored_bytes``
bounds (set it below ``maxmemory``).
``changed:<id>``
    a pub/sub channel published to on every change of a task's state or
    progress; :meth:`RedisStore.watch` (a Server-Sent Events stream) listens.
``list:<owner>:<state>`` / ``list:<owner>:all``
    sorted sets by creation time: the task list's index, per owner hash
    (empty for none). A finished task is also in ``unlist`` (by its expiry,
    as ``<owner>|<id>``), from which it leaves the index when it expires.
``cb:<id>`` / ``callbacks``
    a completion callback still to send (a hash), and the sorted set of them
    by when each is due; claiming one pushes its due time past the claim.

Every change of state is one Lua script, so it is atomic across processes.
Times are the clients' clocks (``time.time()``), like every other store: keep
the machines' clocks in sync. On a Redis Cluster (a ``RedisCluster`` client,
or a ``redis+cluster://`` URL) the prefix must carry a hash tag
(``{asyncwsgi}:``), so that every key of the table lives in one slot and each
script runs on one node; a prefix without one is refused.

>>> store = RedisStore.from_url("redis://localhost:6379/0")
>>> app = AsyncMiddleware(app, paths=["/reports/*"], store=store)
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from ..task import (
    Body,
    BodyKind,
    BodySink,
    Callback,
    Created,
    Delivery,
    KeyEntry,
    Progress,
    Result,
    State,
    TaskRecord,
)
from .base import Store, StoreFull, StoreUnavailable
from .settings import split_url

__all__ = ["RedisStore"]

logger = logging.getLogger("asyncwsgi")

# Shared Lua: KEYS are the main keys of a call; every other key is derived from
# the prefix (ARGV[1]) inside the script.
_LIB = """
local prefix = ARGV[1]
local tombstone_ms = tonumber(ARGV[2])
local max_tombstones = tonumber(ARGV[3])

local function ms(seconds)
  local n = math.ceil(seconds * 1000)
  if n < 1 then n = 1 end
  return string.format('%d', n)
end

local function trim_tombstones(now)
  local tombs = prefix .. 'tombs'
  redis.call('ZREMRANGEBYSCORE', tombs, '-inf', now - tombstone_ms / 1000)
  local excess = redis.call('ZCOUNT', tombs, '-inf', now) - max_tombstones
  if excess > 0 then
    local ids = redis.call('ZRANGEBYSCORE', tombs, '-inf', now, 'LIMIT', 0, excess)
    for _, id in ipairs(ids) do
      if redis.call('EXISTS', prefix .. 'task:' .. id) == 0 then
        redis.call('DEL', prefix .. 'tomb:' .. id)
        redis.call('ZREM', tombs, id)
      end
    end
  end
end

local function wake(id)
  local done = prefix .. 'done:' .. id
  redis.call('LPUSH', done, '1')
  redis.call('PEXPIRE', done, '60000')
end

local function changed(id)
  redis.call('PUBLISH', prefix .. 'changed:' .. id, '1')
end

-- The task list's index: moves a task between its owner's state sets.
local function relist(id, owner, created, from, to)
  local base = prefix .. 'list:' .. owner .. ':'
  if from then
    redis.call('ZREM', base .. from, id)
  end
  if to then
    redis.call('ZADD', base .. to, created, id)
    redis.call('ZADD', base .. 'all', created, id)
  else
    redis.call('ZREM', base .. 'all', id)
  end
end

-- Finished tasks whose record expired leave the index, a batch at a time.
local function unlist_expired(now)
  local unlist = prefix .. 'unlist'
  local due = redis.call('ZRANGEBYSCORE', unlist, '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(due) do
    local bar = string.find(member, '|', 1, true)
    local owner = string.sub(member, 1, bar - 1)
    local id = string.sub(member, bar + 1)
    if redis.call('EXISTS', prefix .. 'task:' .. id) == 0 then
      relist(id, owner, 0, 'done', nil)
    end
    redis.call('ZREM', unlist, member)
  end
end


local function body_key(id, kind)
  return prefix .. 'body:' .. id .. ':' .. kind
end

-- Removes a spooled body and gives its bytes back to the budget.
local function drop_body(id, kind)
  local member = id .. ':' .. kind
  local held = redis.call('HGET', prefix .. 'bodies', member)
  if held then
    redis.call('DECRBY', prefix .. 'stored', held)
    redis.call('HDEL', prefix .. 'bodies', member)
  end
  redis.call('ZREM', prefix .. 'bodies:until', member)
  redis.call('UNLINK', body_key(id, kind))
end

-- Removes the bodies whose time is up (their task expired, their writer died).
local function reap_bodies(now)
  local due = redis.call('ZRANGEBYSCORE', prefix .. 'bodies:until', '-inf', now,
                         'LIMIT', 0, 100)
  for _, member in ipairs(due) do
    local id, kind = string.match(member, '^(.*):(%a+)$')
    drop_body(id, kind)
  end
end

-- Counts ``n`` more bytes of a body against the budget (-1: none); false when
-- they are not free. The body's time is renewed: ``seconds`` more for its
-- writer (unless it already lives as long as its task).
local function take_bytes(key, member, now, seconds, budget, n)
  if budget >= 0 and tonumber(redis.call('GET', prefix .. 'stored') or '0') + n > budget then
    return false
  end
  redis.call('INCRBY', prefix .. 'stored', n)
  redis.call('HINCRBY', prefix .. 'bodies', member, n)
  local member_until = redis.call('ZSCORE', prefix .. 'bodies:until', member)
  if not member_until or member_until ~= 'inf' then
    redis.call('ZADD', prefix .. 'bodies:until', now + seconds, member)
    redis.call('PEXPIRE', key, ms(seconds + 60))
  end
  return true
end

-- Completes a queued or running task (the caller checked the state). With
-- ``spooled`` ("<size> <sha256>") the result's body is body:<id>:result.
local function finish(id, now, status, headers, body, spooled)
  local task = prefix .. 'task:' .. id
  local was = redis.call('HMGET', task, 'state', 'owner', 'created', 'ttl', 'callback')
  local owner = was[2] or ''
  relist(id, owner, was[3], was[1], 'done')
  local expires = tonumber(now) + tonumber(was[4] or '0')
  redis.call('ZADD', prefix .. 'unlist', expires, owner .. '|' .. id)
  if was[5] then
    local cb = prefix .. 'cb:' .. id
    redis.call('HSET', cb, 'callback', was[5], 'status', tonumber(string.sub(status, 1, 3)),
               'finished', now, 'attempts', 0, 'deadline', expires, 'claim', '')
    -- Kept a little past its deadline, so that it can never outlive the
    -- table even if no process ever settles it.
    redis.call('PEXPIREAT', cb, string.format('%d', math.ceil((expires + 3600) * 1000)))
    redis.call('ZADD', prefix .. 'callbacks', now, id)
  end
  changed(id)
  redis.call('HSET', task, 'state', 'done', 'finished', now,
             'status', status, 'headers', headers, 'body', body)
  drop_body(id, 'request')
  if spooled then
    local size, sha = string.match(spooled, '^(%d+) (%x+)$')
    redis.call('HSET', task, 'body_size', size, 'body_sha256', sha)
    local ttl = tonumber(redis.call('HGET', task, 'ttl') or '0')
    redis.call('ZADD', prefix .. 'bodies:until', tonumber(now) + ttl, id .. ':result')
    redis.call('PEXPIRE', body_key(id, 'result'), ms(ttl))
  else
    drop_body(id, 'result')  -- a lost verdict: what a writer spooled goes
  end
  redis.call('HDEL', task, 'lease_until')
  redis.call('ZREM', prefix .. 'active', id)
  redis.call('ZREM', prefix .. 'leases', id)
  local ttl = tonumber(redis.call('HGET', task, 'ttl') or '0')
  local keep = ms(ttl)
  redis.call('PEXPIRE', task, keep)
  local owner = redis.call('HGET', task, 'owner') or ''
  redis.call('SET', prefix .. 'tomb:' .. id, owner, 'PX', ms(ttl + tombstone_ms / 1000))
  redis.call('ZADD', prefix .. 'tombs', tonumber(now) + ttl, id)
  local key = redis.call('HGET', task, 'key')
  if key then
    redis.call('PEXPIRE', prefix .. 'key:' .. key, keep)
  end
  wake(id)
  trim_tombstones(tonumber(now))
  unlist_expired(tonumber(now))
end
"""

# KEYS[1] task. ARGV[4] id, ARGV[5] limit (-1: none), ARGV[6] now, ARGV[7]
# created, ARGV[8] key ('' if none), ARGV[9] key value, ARGV[10] byte budget
# (-1: none), ARGV[11] the bytes of it that must be free, ARGV[12..]
# field/value pairs. Answers 1 (created), 0 (full), -1 (the byte budget is
# spent, or a writer waits for room) or the value of a key already bound to a
# task that exists.
_CREATE = (
    _LIB
    + """
local id = ARGV[4]
local limit = tonumber(ARGV[5])
local active = prefix .. 'active'
trim_tombstones(tonumber(ARGV[6]))
if ARGV[8] ~= '' then
  local held = redis.call('GET', prefix .. 'key:' .. ARGV[8])
  if held and held ~= '' then
    local bound = cjson.decode(held)[1]
    if redis.call('EXISTS', prefix .. 'task:' .. bound) == 1 then
      return held
    end
  end
end
if limit >= 0 and redis.call('ZCARD', active) >= limit then
  return 0
end
reap_bodies(tonumber(ARGV[6]))
local budget = tonumber(ARGV[10])
if budget >= 0 then
  local stored = tonumber(redis.call('GET', prefix .. 'stored') or '0')
  if stored >= budget or stored + tonumber(ARGV[11]) > budget
     or redis.call('EXISTS', prefix .. 'room_wanted') == 1 then
    return -1
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 12))
if redis.call('EXISTS', body_key(id, 'request')) == 1 then
  -- The spooled request body now lives as long as its task does.
  redis.call('PERSIST', body_key(id, 'request'))
  redis.call('ZADD', prefix .. 'bodies:until', 'inf', id .. ':request')
end
redis.call('ZADD', active, ARGV[7], id)
relist(id, redis.call('HGET', KEYS[1], 'owner') or '', ARGV[7], nil, 'queued')
unlist_expired(tonumber(ARGV[6]))
local lease_until = redis.call('HGET', KEYS[1], 'lease_until')
if lease_until then
  redis.call('ZADD', prefix .. 'leases', lease_until, id)
end
if ARGV[8] ~= '' then
  redis.call('SET', prefix .. 'key:' .. ARGV[8], ARGV[9])
  redis.call('HSET', KEYS[1], 'key', ARGV[8])
end
return 1
"""
)

# KEYS[1] task, KEYS[2] tomb. ARGV[4] now.
# Answers {0}, {1, field, value, ...} or {2, owner}.
_READ = (
    _LIB
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local answer = redis.call('HGETALL', KEYS[1])
  table.insert(answer, 1, 1)
  return answer
end
trim_tombstones(tonumber(ARGV[4]))
local owner = redis.call('GET', KEYS[2])
if owner then
  return {2, owner}
end
return {0}
"""
)

# KEYS[1] task. ARGV[4] id, ARGV[5] now, ARGV[6] lease_until.
_START = (
    _LIB
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'running', 'started', ARGV[5], 'lease_until', ARGV[6])
redis.call('ZADD', prefix .. 'leases', ARGV[6], ARGV[4])
local was = redis.call('HMGET', KEYS[1], 'owner', 'created')
relist(ARGV[4], was[1] or '', was[2], 'queued', 'running')
changed(ARGV[4])
return 1
"""
)

# ARGV[4] lease_until, ARGV[5..] ids.
_HEARTBEAT = (
    _LIB
    + """
for i = 5, #ARGV do
  local task = prefix .. 'task:' .. ARGV[i]
  local state = redis.call('HGET', task, 'state')
  if state == 'running' or state == 'queued' then
    redis.call('HSET', task, 'lease_until', ARGV[4])
    redis.call('ZADD', prefix .. 'leases', ARGV[4], ARGV[i])
  end
end
return 0
"""
)

# KEYS[1] task. ARGV[4] progress (JSON), ARGV[5] id.
_PROGRESS = (
    _LIB
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'progress', ARGV[4])
changed(ARGV[5])
return 1
"""
)

# KEYS[1] task. ARGV[4] id, ARGV[5] now, ARGV[6..8] the result, ARGV[9] finish
# only if the lease ended before this time ('': whatever the lease), ARGV[10]
# the spooled body's "<size> <sha256>" ('': the body is ARGV[8]).
_FINISH = (
    _LIB
    + """
local fields = redis.call('HMGET', KEYS[1], 'state', 'lease_until')
if fields[1] ~= 'queued' and fields[1] ~= 'running' then
  redis.call('ZREM', prefix .. 'leases', ARGV[4])
  return 0
end
if ARGV[9] ~= '' and not (fields[2] and tonumber(fields[2]) < tonumber(ARGV[9])) then
  return 0
end
local spooled = nil
if ARGV[10] ~= '' then
  spooled = ARGV[10]
end
finish(ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], spooled)
return 1
"""
)

# KEYS[1] task. ARGV[4] id.
_DELETE = (
    _LIB
    + """
local id = ARGV[4]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local key = redis.call('HGET', KEYS[1], 'key')
if key then
  redis.call('DEL', prefix .. 'key:' .. key)
end
local was = redis.call('HMGET', KEYS[1], 'state', 'owner')
relist(id, was[2] or '', 0, was[1], nil)
redis.call('ZREM', prefix .. 'unlist', (was[2] or '') .. '|' .. id)
changed(id)
redis.call('DEL', KEYS[1], prefix .. 'tomb:' .. id)
redis.call('ZREM', prefix .. 'active', id)
redis.call('ZREM', prefix .. 'leases', id)
redis.call('ZREM', prefix .. 'tombs', id)
drop_body(id, 'request')
drop_body(id, 'result')
wake(id)
return 1
"""
)


# KEYS[1] the active set. ARGV[1] prefix. Answers {queued, running}.
_COUNT_STATES = """
local queued, running = 0, 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local state = redis.call('HGET', ARGV[1] .. 'task:' .. id, 'state')
  if state == 'queued' then
    queued = queued + 1
  elseif state == 'running' then
    running = running + 1
  end
end
return {queued, running}
"""

# KEYS[1] body. ARGV[4] member (<id>:<kind>), ARGV[5] now, ARGV[6] seconds the
# writer has for its next chunk, ARGV[7] byte budget (-1: none), ARGV[8] the
# chunks already written, ARGV[9] the chunk, ARGV[10] the bytes of it not yet
# reserved. Answers 1, 0 (budget spent) or -1 (the body was removed
# meanwhile: deleted, or its writer was too slow).
_APPEND = (
    _LIB
    + """
local now = tonumber(ARGV[5])
reap_bodies(now)
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[8]) then
  return -1
end
redis.call('RPUSH', KEYS[1], ARGV[9])
if not take_bytes(KEYS[1], ARGV[4], now, tonumber(ARGV[6]), tonumber(ARGV[7]),
                  tonumber(ARGV[10])) then
  redis.call('RPOP', KEYS[1])
  return 0
end
return 1
"""
)

# KEYS[1] body. ARGV[4] member, ARGV[5] now, ARGV[6] seconds the writer has
# for its first chunk, ARGV[7] byte budget, ARGV[8] bytes. Answers 1, or 0
# when they are not free.
_RESERVE = (
    _LIB
    + """
local now = tonumber(ARGV[5])
reap_bodies(now)
if take_bytes(KEYS[1], ARGV[4], now, tonumber(ARGV[6]), tonumber(ARGV[7]),
              tonumber(ARGV[8])) then
  return 1
end
return 0
"""
)

# KEYS[1] body (for a cluster's routing). ARGV[4] member, ARGV[5] bytes
# reserved and not written: given back.
_RELEASE = (
    _LIB
    + """
local held = tonumber(redis.call('HGET', prefix .. 'bodies', ARGV[4]) or '0')
local give = math.min(held, tonumber(ARGV[5]))
if give > 0 then
  redis.call('HINCRBY', prefix .. 'bodies', ARGV[4], -give)
  redis.call('DECRBY', prefix .. 'stored', give)
end
return give
"""
)

# KEYS[1] room_wanted. ARGV[4] milliseconds: new tasks are refused meanwhile
# (a writer waits); 0 ends that (the writer has its room).
_WANT_ROOM = (
    _LIB
    + """
local room = KEYS[1]
if tonumber(ARGV[4]) == 0 then
  redis.call('DEL', room)
elseif redis.call('PTTL', room) < tonumber(ARGV[4]) then
  redis.call('SET', room, '1', 'PX', ARGV[4])
end
return 0
"""
)

# KEYS[1] list:<owner>:<state or all>. ARGV[4] now, ARGV[5] limit, ARGV[6] the
# cursor's created ('' for the newest), ARGV[7] its id. Answers {id, {field,
# value, ...}, ...}, newest first by (created, id).
_LIST = (
    _LIB
    + """
unlist_expired(tonumber(ARGV[4]))
-- Every field but the result's body: a page never loads bodies.
local listed = {'state', 'created', 'started', 'finished', 'progress', 'status', 'headers',
                'owner', 'lease_until', 'ttl', 'callback'}
local limit = tonumber(ARGV[5])
local answer = {}
local ids = {}
local top = '+inf'
if ARGV[6] ~= '' then
  -- Equal creation times are ordered by id (what ZRANGE does too): those
  -- tied with the cursor come first, then everything strictly older.
  local tied = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[6], ARGV[6])
  for i = #tied, 1, -1 do
    if tied[i] < ARGV[7] then
      table.insert(ids, tied[i])
    end
  end
  top = '(' .. ARGV[6]
end
local offset = 0
while #answer < limit * 2 do
  if #ids == 0 then
    ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], top, '-inf', 'LIMIT', offset, limit)
    offset = offset + limit
    if #ids == 0 then
      break
    end
  end
  local id = table.remove(ids, 1)
  local values = redis.call('HMGET', prefix .. 'task:' .. id, unpack(listed))
  local fields = {}
  for i, name in ipairs(listed) do
    if values[i] then
      table.insert(fields, name)
      table.insert(fields, values[i])
    end
  end
  if #fields == 0 then
    -- Expired before its turn in unlist_expired: drop it from the index.
    redis.call('ZREM', KEYS[1], id)
    offset = offset - 1
  else
    table.insert(answer, id)
    table.insert(answer, fields)
  end
end
return answer
"""
)

# KEYS[1] callbacks. ARGV[4] now, ARGV[5] claimed until, ARGV[6] limit, ARGV[7]
# the claim. Answers {id, callback, status, finished, attempts, deadline, ...}.
_CLAIM = (
    _LIB
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4], 'LIMIT', 0, ARGV[6])
local answer = {}
for _, id in ipairs(ids) do
  local cb = prefix .. 'cb:' .. id
  local fields = redis.call('HMGET', cb, 'callback', 'status', 'finished', 'attempts',
                            'deadline')
  if fields[1] then
    redis.call('ZADD', KEYS[1], ARGV[5], id)
    redis.call('HSET', cb, 'claim', ARGV[7])
    table.insert(answer, id)
    for _, value in ipairs(fields) do
      table.insert(answer, value)
    end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return answer
"""
)

# KEYS[1] cb:<id>, KEYS[2] callbacks. ARGV[4] id, ARGV[5] claim, ARGV[6] retry
# at ('' when sent or given up).
_SETTLE = (
    _LIB
    + """
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[5] then
  return 0
end
if ARGV[6] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
else
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('HSET', KEYS[1], 'claim', '')
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[4])
end
return 1
"""
)

# ARGV[4] id, ARGV[5] kind.
_DROP = (
    _LIB
    + """
drop_body(ARGV[4], ARGV[5])
return 0
"""
)

# ARGV[4] now. Answers the bytes of the spooled bodies held.
_STORED = (
    _LIB
    + """
reap_bodies(tonumber(ARGV[4]))
return tonumber(redis.call('GET', prefix .. 'stored') or '0')
"""
)

_DEFAULT_PREFIX = "asyncwsgi:"
# For the clients the store makes from a URL (the URL's own socket_timeout=
# and socket_connect_timeout= win): a Redis that stopped answering (stopped,
# partitioned) is a 503 after this long, not a request that hangs for ever.
_TIMEOUTS = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}

# Redis down, restarting, loading its data, failing over, or a cluster that
# lost a slot: the store is unavailable, not broken (ConnectionError covers
# BusyLoadingError, and redis-py's TimeoutError a Redis that stopped answering).
_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,
    redis.exceptions.SlotNotCoveredError,
)


def _split_prefix(url: str) -> tuple[str, str | None]:
    """The URL without its ``prefix=`` query parameter (ours, not redis-py's),
    and that prefix."""
    # The stores' own settings (chunk_size=...) come as keywords too (open_store).
    url = split_url(url)[0]
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    if not prefixes:
        return url, None
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefixes[-1]


def _connection_kwargs(client: redis.Redis | RedisCluster) -> dict[str, Any]:
    if isinstance(client, RedisCluster):
        kwargs: dict[str, Any] = client.nodes_manager.connection_kwargs
    else:
        kwargs = client.connection_pool.connection_kwargs
    return kwargs


def _check_cluster_prefix(prefix: str) -> None:
    # Redis hashes only what is between the first '{' and the next '}', when
    # that is not empty (the cluster specification's hash tags).
    start = prefix.find("{")
    if start < 0 or prefix.find("}", start + 1) <= start + 1:
        raise ValueError(
            f"in Redis Cluster the prefix needs a hash tag, such as '{{asyncwsgi}}:', so "
            f"that every key of the table lives in one slot; {prefix!r} has none"
        )


def _num(value: float) -> str:
    return repr(float(value))


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisStore(Store):
    """Tasks in Redis, shared by every process that opens the same URL.

    ``client_or_url`` is a ``redis.Redis`` or ``redis.cluster.RedisCluster``
    client (made with ``decode_responses=False``; the caller keeps closing it)
    or a URL (``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for
    TLS, ``unix:///path/to/redis.sock?db=0``, ``redis+cluster://host:port/``
    or ``rediss+cluster://`` naming any node of a cluster), for which the
    store makes and closes its own client. A ``prefix=`` query parameter in the URL sets ``prefix``;
    :attr:`url` carries a non-default prefix that way, so a process that
    opens the store by its URL (a Celery worker) finds the same table.

    A finished task's keys expire through Redis TTLs after the record's
    ``ttl``; a tombstone then answers 410 for ``tombstone_ttl`` seconds, at
    most ``max_tombstones`` of them kept.

    >>> store = RedisStore.from_url("redis://localhost:6379/0")
    """

    shared = True

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        *,
        prefix: str = _DEFAULT_PREFIX,
        max_tombstones: int = 10_000,
        tombstone_ttl: float = 3600.0,
        max_stored_bytes: int | None = None,
        chunk_size: int = 2**20,
        spool_ttl: float = 600.0,
    ) -> None:
        self.max_stored_bytes = max_stored_bytes
        self.chunk_size = chunk_size
        self.spool_ttl = spool_ttl
        self.client: redis.Redis | RedisCluster
        if isinstance(client_or_url, str):
            connect_url, url_prefix = _split_prefix(client_or_url)
            if url_prefix is not None:
                if prefix not in (_DEFAULT_PREFIX, url_prefix):
                    raise ValueError("the URL's prefix= and the prefix keyword differ")
                prefix = url_prefix
            # The URL another process (a Celery worker) opens the same table by.
            self.url = client_or_url
            if url_prefix is None and prefix != _DEFAULT_PREFIX:
                separator = "&" if urlsplit(client_or_url).query else "?"
                self.url = f"{client_or_url}{separator}{urlencode({'prefix': prefix})}"
            scheme, _, rest = connect_url.partition(":")
            if scheme.lower().endswith("+cluster"):
                _check_cluster_prefix(prefix)  # before a client exists to be closed
                self.client = RedisCluster.from_url(
                    scheme[: -len("+cluster")] + ":" + rest, decode_responses=False, **_TIMEOUTS
                )
            else:
                self.client = redis.Redis.from_url(connect_url, decode_responses=False, **_TIMEOUTS)
            self._owns_client = True
        else:
            if _connection_kwargs(client_or_url).get("decode_responses"):
                raise ValueError("RedisStore needs a client with decode_responses=False")
            self.url = None
            self.client = client_or_url
            self._owns_client = False
        if isinstance(self.client, RedisCluster):
            _check_cluster_prefix(prefix)
        # A client with a socket timeout would give up on a longer BLMOVE (and
        # Redis ends a block up to a tick, 100 ms, late).
        socket_timeout = _connection_kwargs(self.client).get("socket_timeout")
        self._block_limit: float | None = None
        if socket_timeout:
            timeout = float(socket_timeout)
            self._block_limit = round(max(timeout / 2, timeout - 0.25, 0.001), 3)
        self.prefix = prefix
        super().__init__(max_tombstones=max_tombstones, tombstone_ttl=tombstone_ttl)
        self._lib_args: list[str] = [prefix, _num(tombstone_ttl * 1000), str(int(max_tombstones))]
        register = self.client.register_script
        self._create = register(_CREATE)
        self._read_script = register(_READ)
        self._start_script = register(_START)
        self._heartbeat_script = register(_HEARTBEAT)
        self._progress = register(_PROGRESS)
        self._finish_script = register(_FINISH)
        self._delete_script = register(_DELETE)
        self._count_states_script = register(_COUNT_STATES)
        self._append_script = register(_APPEND)
        self._reserve_script = register(_RESERVE)
        self._release_script = register(_RELEASE)
        self._want_room_script = register(_WANT_ROOM)
        self._drop_script = register(_DROP)
        self._stored_script = register(_STORED)
        self._list_script = register(_LIST)
        self._claim_script = register(_CLAIM)
        self._settle_script = register(_SETTLE)
        self._check_eviction()

    def _check_eviction(self) -> None:
        """Warn when the server may evict keys: an evicted task is a 202 that
        turns into a 404 (docs/stores.md says what the store needs)."""
        try:
            if isinstance(self.client, RedisCluster):
                # The table is in one slot: the node that serves it is the one.
                # (Called through Any: redis-py releases differ on whether
                # this method is annotated, so no one ignore fits them all.)
                cluster: Any = self.client
                node = cluster.get_node_from_key(self.prefix + "active")
                info: dict[str, Any] = self.client.info("memory", target_nodes=node)
            else:
                info = self.client.info("memory")
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            # Down at start: the calls will say so.
            logger.debug("asyncwsgi: could not read Redis's maxmemory-policy: %s", exc)
            return
        # A cluster may answer per node ({"host:port": {...}}), a server directly.
        nodes = [info] if "maxmemory_policy" in info else list(info.values())
        policies = {str(node.get("maxmemory_policy", "noeviction")) for node in nodes}
        for policy in sorted(policies - {"noeviction"}):
            logger.warning(
                "asyncwsgi: Redis runs with maxmemory-policy %s, which can evict the "
                "store's keys (an accepted task then answers 404); use "
                "maxmemory-policy noeviction for the task store",
                policy,
            )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on its own client for ``redis://``, ``rediss://`` or
        ``unix://`` URLs; ``options`` are the store's keyword arguments."""
        return cls(url, **options)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    # -- the primitives --------------------------------------------------

    _backend_errors = (*_UNAVAILABLE, redis.ResponseError)

    def _fault(self, exc: Exception) -> None:
        if isinstance(exc, redis.OutOfMemoryError):  # maxmemory reached under noeviction
            raise StoreFull(f"Redis is out of memory: {exc}") from exc
        if isinstance(exc, _UNAVAILABLE):
            raise StoreUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc
        if str(exc).startswith("MISCONF"):
            # A Redis that cannot persist refuses writes (stop-writes-on-bgsave-error).
            raise StoreUnavailable(f"Redis refuses writes: {exc}") from exc

    def _insert(
        self,
        record: TaskRecord,
        key: str | None,
        fingerprint: str | None,
        limit: int | None,
        room: int,
    ) -> Created:
        fields: list[str | bytes] = [
            "state",
            record.state,
            "created",
            _num(record.created),
            "ttl",
            _num(record.ttl),
        ]
        if record.owner is not None:
            fields += ["owner", record.owner]
        if record.started is not None:
            fields += ["started", _num(record.started)]
        if record.lease_until is not None:
            fields += ["lease_until", _num(record.lease_until)]
        if record.progress is not None:
            fields += ["progress", json.dumps(record.progress)]
        if record.callback is not None:
            fields += ["callback", json.dumps([record.callback.url, record.callback.status_url])]
        key_value = json.dumps([record.id, fingerprint]) if key is not None else ""
        answer = self._create(
            keys=[self._key("task", record.id)],
            args=[
                *self._lib_args,
                record.id,
                -1 if limit is None else int(limit),
                _num(time.time()),
                _num(record.created),
                key or "",
                key_value,
                self._budget(),
                room,
                *fields,
            ],
        )
        if answer == -1:
            raise StoreFull(
                f"the store's byte budget (max_stored_bytes={self.max_stored_bytes}) is spent"
            )
        if isinstance(answer, bytes):
            task_id, bound_fingerprint = json.loads(answer)
            return Created(False, KeyEntry(task_id, bound_fingerprint))
        return Created(bool(answer))

    def _read(self, task_id: str) -> TaskRecord | None:
        answer = cast(
            "list[Any]",
            self._read_script(
                keys=[self._key("task", task_id), self._key("tomb", task_id)],
                args=[*self._lib_args, _num(time.time())],
            ),
        )
        kind = int(answer[0])
        if kind == 0:
            return None
        if kind == 2:
            return self._tombstone(task_id, _str(answer[1]) or None)
        raw = answer[1:]
        fields = {_str(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}
        record = _record(task_id, fields)
        if record.result is not None and "body_size" in fields:
            record.result.body = RedisBody(
                self,
                self._key("body", f"{task_id}:result"),
                int(fields["body_size"]),
                _str(fields["body_sha256"]),
            )
        return record

    def _start(self, task_id: str, now: float, lease_until: float) -> bool:
        started = self._start_script(
            keys=[self._key("task", task_id)],
            args=[*self._lib_args, task_id, _num(now), _num(lease_until)],
        )
        return bool(started)

    def _heartbeat(self, task_ids: list[str], lease_until: float) -> None:
        # The key is not read by the script: it routes the call in a cluster.
        self._heartbeat_script(
            keys=[self.prefix + "leases"], args=[*self._lib_args, _num(lease_until), *task_ids]
        )

    def _set_progress(self, task_id: str, progress: Progress) -> None:
        self._progress(
            keys=[self._key("task", task_id)],
            args=[*self._lib_args, json.dumps(progress), task_id],
        )

    def _finish(
        self, task_id: str, result: Result, now: float, *, lapsed_before: float | None
    ) -> bool:
        finished = self._finish_script(
            keys=[self._key("task", task_id)],
            args=[
                *self._lib_args,
                task_id,
                _num(now),
                result.status,
                _headers(result.headers),
                result.body if isinstance(result.body, bytes) else b"",
                "" if lapsed_before is None else _num(lapsed_before),
                ""
                if isinstance(result.body, bytes)
                else f"{result.body.size} {result.body.sha256}",
            ],
        )
        return bool(finished)

    def _delete(self, task_id: str) -> bool:
        deleted = self._delete_script(
            keys=[self._key("task", task_id)], args=[*self._lib_args, task_id]
        )
        return bool(deleted)

    def _lapsed(self, now: float, limit: int) -> list[str]:
        ids = self.client.zrangebyscore(
            self.prefix + "leases", "-inf", f"({_num(now)}", start=0, num=limit
        )
        return [_str(task_id) for task_id in ids]

    def _count(self) -> int:
        return int(self.client.zcard(self.prefix + "active"))

    def _count_states(self) -> dict[str, int]:
        # One script: the states of the active set, read in one step (the set
        # is bounded by the middleware's max_pending).
        queued, running = self._count_states_script(
            keys=[self.prefix + "active"], args=[self.prefix]
        )
        return {"queued": int(queued), "running": int(running)}

    def _block(self, task_id: str, timeout: float, poll: float) -> None:
        # Whole milliseconds: Redis reads a timeout under 1 ms as "forever".
        # A finish pushes to done:<id> (kept a minute), so a finish that came
        # before this call is seen at once. Rotating the list onto itself
        # leaves it in place for the other waiters: every one of them wakes.
        seconds = max(0.001, round(timeout, 3))
        if self._block_limit is not None:
            seconds = min(seconds, self._block_limit)
        done = self._key("done", task_id)
        try:
            # (Redis takes a fractional timeout; some redis-py releases annotate
            # it as int, so the call goes through Any.)
            client: Any = self.client
            client.blmove(done, done, seconds, "RIGHT", "LEFT")
        except redis.TimeoutError:
            pass  # the socket's timeout, not the wait's: the caller reads again

    # -- bodies --------------------------------------------------------------

    def open_sink(self, task_id: str, kind: BodyKind) -> BodySink:
        if self.max_stored_bytes is not None and self.stored_bytes >= self.max_stored_bytes:
            raise StoreFull(
                f"the store's byte budget (max_stored_bytes={self.max_stored_bytes}) is spent"
            )
        return RedisSink(self, task_id, kind)

    def request_body(self, task_id: str, size: int, sha256: str) -> Body:
        return RedisBody(self, self._key("body", f"{task_id}:request"), size, sha256)

    @property
    def stored_bytes(self) -> int:
        """The bytes of the spooled bodies held now."""
        with self._translated():
            held = self._stored_script(
                keys=[self.prefix + "stored"], args=[*self._lib_args, _num(time.time())]
            )
        return int(held)

    def _expire_due(self, now: float) -> None:
        # Redis expires the records and chunks itself; what is left is the
        # ledger of bodies (and their bytes in the budget), reaped a batch at
        # a time by the script behind stored_bytes.
        self._stored_script(keys=[self.prefix + "stored"], args=[*self._lib_args, _num(now)])

    def _budget(self) -> int:
        return -1 if self.max_stored_bytes is None else int(self.max_stored_bytes)

    def want_room(self, seconds: float) -> None:
        if self.max_stored_bytes is None:
            return
        with self._translated():
            millis = max(1, round(seconds * 1000)) if seconds else 0
            self._want_room_script(
                keys=[self.prefix + "room_wanted"], args=[*self._lib_args, millis]
            )

    @contextmanager
    def _listen(self, task_id: str) -> Iterator[Callable[[float], None]]:
        if isinstance(self.client, RedisCluster):
            # (Pub/sub on a cluster client is another API: read again instead.)
            with super()._listen(task_id) as block:
                yield block
            return
        # Subscribed before the caller reads, so that a change in between
        # still wakes it: every change of state or progress publishes.
        # (Through Any: redis-py 8.2 annotates pubsub(), earlier ones do not.)
        client: Any = self.client
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._key("changed", task_id))

            def block(timeout: float) -> None:
                if self._block_limit is not None:
                    timeout = min(timeout, self._block_limit)
                try:
                    pubsub.get_message(timeout=timeout)
                except redis.TimeoutError:
                    pass  # the socket's timeout: the caller reads again

            yield block
        finally:
            pubsub.close()

    def _list(
        self,
        owner: str | None,
        state: State | None,
        before: tuple[float, str] | None,
        limit: int,
    ) -> list[TaskRecord]:
        key = f"{self.prefix}list:{owner or ''}:{state or 'all'}"
        answer = cast(
            "list[Any]",
            self._list_script(
                keys=[key],
                args=[
                    *self._lib_args,
                    _num(time.time()),
                    int(limit),
                    "" if before is None else _num(before[0]),
                    "" if before is None else before[1],
                ],
            ),
        )
        records = []
        for i in range(0, len(answer), 2):
            raw = answer[i + 1]
            fields = {_str(raw[j]): raw[j + 1] for j in range(0, len(raw), 2)}
            records.append(_record(_str(answer[i]), fields))
        return records

    def _claim_callbacks(self, now: float, lease: float, limit: int) -> list[Delivery]:
        claim = secrets.token_hex(8)
        answer = cast(
            "list[Any]",
            self._claim_script(
                keys=[self.prefix + "callbacks"],
                args=[*self._lib_args, _num(now), _num(now + lease), int(limit), claim],
            ),
        )
        deliveries = []
        for i in range(0, len(answer), 6):
            task_id, callback, status, finished, attempts, deadline = answer[i : i + 6]
            url, status_url = json.loads(callback)
            deliveries.append(
                Delivery(
                    _str(task_id),
                    url,
                    status_url,
                    int(status),
                    float(finished),
                    int(attempts),
                    float(deadline),
                    claim,
                )
            )
        return deliveries

    def _settle_callback(self, delivery: Delivery, retry_at: float | None) -> bool:
        settled = self._settle_script(
            keys=[self._key("cb", delivery.task_id), self.prefix + "callbacks"],
            args=[
                *self._lib_args,
                delivery.task_id,
                delivery.claim,
                "" if retry_at is None else _num(retry_at),
            ],
        )
        return bool(settled)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
            if isinstance(self.client, RedisCluster):
                # RedisCluster.close() leaves its nodes' connection pools open
                # (the node clients do not own their pools): close them too.
                for node in list(self.client.nodes_manager.nodes_cache.values()):
                    if node.redis_connection is not None:
                        node.redis_connection.connection_pool.disconnect()

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.prefix!r}>"


def _headers(headers: list[tuple[str, str]]) -> str:
    return json.dumps([[name, value] for name, value in headers])


def _record(task_id: str, fields: dict[str, Any]) -> TaskRecord:
    def number(name: str) -> float | None:
        value = fields.get(name)
        return None if value is None else float(value)

    result: Result | None = None
    if "status" in fields:
        result = Result(
            _str(fields["status"]),
            [(name, value) for name, value in json.loads(fields["headers"])],
            bytes(fields.get("body", b"")),
        )
    progress = fields.get("progress")
    owner = fields.get("owner")
    callback = fields.get("callback")
    return TaskRecord(
        task_id,
        state=cast(Any, _str(fields["state"])),
        created=number("created") or 0.0,
        started=number("started"),
        finished=number("finished"),
        progress=None if progress is None else json.loads(progress),
        result=result,
        owner=None if owner is None else _str(owner),
        lease_until=number("lease_until"),
        ttl=float(fields.get("ttl", 300.0)),
        callback=None if callback is None else Callback(*json.loads(callback)),
    )


class RedisSink(BodySink):
    """Writes a body to ``body:<id>:<kind>`` in chunks of the store's
    ``chunk_size``: one script call per chunk, which counts it against the
    budget."""

    def __init__(self, store: RedisStore, task_id: str, kind: BodyKind) -> None:
        self.store = store
        self.task_id = task_id
        self.kind = kind
        self.key = store._key("body", f"{task_id}:{kind}")
        self.member = f"{task_id}:{kind}"
        self.chunks = 0
        self.pushed = 0
        # Bytes counted against the budget: reserved ahead, or pushed past that.
        self.counted = 0
        self._buffer = bytearray()

    def reserve(self, nbytes: int) -> None:
        store = self.store
        with store._translated():
            taken = store._reserve_script(
                keys=[self.key],
                args=[
                    *store._lib_args,
                    self.member,
                    _num(time.time()),
                    _num(store.spool_ttl),
                    store._budget(),
                    nbytes,
                ],
            )
        if not int(taken):
            raise StoreFull(
                f"the store's byte budget (max_stored_bytes={store.max_stored_bytes}) is spent"
            )
        self.counted += nbytes

    def write(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        size = self.store.chunk_size
        while len(buffer) >= size:
            self._push(bytes(buffer[:size]))
            del buffer[:size]

    def _push(self, chunk: bytes) -> None:
        store = self.store
        extra = max(0, self.pushed + len(chunk) - self.counted)
        with store._translated():
            answer = int(
                store._append_script(
                    keys=[self.key],
                    args=[
                        *store._lib_args,
                        f"{self.task_id}:{self.kind}",
                        _num(time.time()),
                        _num(store.spool_ttl),
                        store._budget(),
                        self.chunks,
                        chunk,
                        extra,
                    ],
                )
            )
        if answer == 0:
            raise StoreFull(
                f"the store's byte budget (max_stored_bytes={store.max_stored_bytes}) is spent"
            )
        if answer < 0:
            raise StoreFull("the body was removed while it was being written")
        self.chunks += 1
        self.pushed += len(chunk)
        self.counted += extra

    def commit(self, size: int, sha256: str) -> Body:
        if self._buffer:
            self._push(bytes(self._buffer))
            self._buffer = bytearray()
        unused = self.counted - self.pushed
        if unused > 0:
            store = self.store
            with store._translated():
                store._release_script(keys=[self.key], args=[*store._lib_args, self.member, unused])
            self.counted = self.pushed
        return RedisBody(self.store, self.key, size, sha256)

    def discard(self) -> None:
        self._buffer = bytearray()
        store = self.store
        with store._translated():
            store._drop_script(keys=[self.key], args=[*store._lib_args, self.task_id, self.kind])


class RedisBody(Body):
    """A body in chunks in Redis, read a chunk at a time."""

    __slots__ = ("store", "key")

    def __init__(self, store: RedisStore, key: str, size: int, sha256: str) -> None:
        super().__init__(size, sha256)
        self.store = store
        self.key = key

    def open(self) -> io.BufferedReader:
        with self.store._translated():
            exists = self.store.client.exists(self.key)
        if not exists:
            raise FileNotFoundError(f"no body at {self.key}")
        return io.BufferedReader(_ChunkReader(self), buffer_size=256 * 1024)

    def chunks(self, start: int, stop: int) -> Iterator[bytes]:
        # Redis's own chunks, sliced only at the ends of the range.
        client = self.store.client
        size = self.store.chunk_size
        index = start // size
        position = index * size
        while position < stop:
            chunk = client.lindex(self.key, index)
            if chunk is None:
                raise OSError(f"the body at {self.key} was removed while it was read")
            piece = cast(bytes, chunk)
            end = position + len(piece)
            if position < start or end > stop:
                piece = piece[max(0, start - position) : stop - position]
            yield piece
            position = end
            index += 1


class _ChunkReader(io.RawIOBase):
    def __init__(self, body: RedisBody) -> None:
        self.body = body
        self.chunk_size = body.store.chunk_size
        self.position = 0
        self._index = -1
        self._chunk = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.position
        elif whence == io.SEEK_END:
            offset += self.body.size
        self.position = max(0, offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.body.size:
            return 0
        index, offset = divmod(self.position, self.chunk_size)
        if index != self._index:
            chunk = self.body.store.client.lindex(self.body.key, index)
            if chunk is None:
                raise OSError(f"the body at {self.body.key} was removed while it was read")
            self._chunk = cast(bytes, chunk)
            self._index = index
        piece = self._chunk[offset : offset + len(buffer)]
        buffer[: len(piece)] = piece
        self.position += len(piece)
        return len(piece)
