-- uses: tombstones signals index bodies
-- Completes a queued or running task and starts its retention: the record
-- and its key expire after the record's ttl (a spooled result with them),
-- and only what the task uses is done besides: its tombstone, its place in
-- the task list, its callback, its waiters and watchers, its bodies.
-- KEYS[1] task. ARGV[4] id, ARGV[5] now, ARGV[6..8] the result's status,
-- headers and body, ARGV[9] finish only if the lease ended before this time
-- ('': whatever the lease), ARGV[10] the spooled body's "<size> <sha256>" ('':
-- the body is ARGV[8]). Answers 1, or 0 when the task was not finished.
local task = KEYS[1]
local id = ARGV[4]
local now = tonumber(ARGV[5])
local status = ARGV[6]
local was = redis.call('HMGET', task, 'state', 'lease_until', 'owner', 'created', 'ttl',
                       'callback', 'key', 'listed', 'watched', 'waited', 'request_body',
                       'spooling')
local state = was[1]
if state ~= 'queued' and state ~= 'running' then
  redis.call('ZREM', leases, id)
  return 0
end
local lapsed = ARGV[9] ~= ''
if lapsed and not (was[2] and tonumber(was[2]) < tonumber(ARGV[9])) then
  return 0
end
local owner = was[3] or ''
local ttl = tonumber(was[5] or '0')
local expires = now + ttl
local keep = ms(ttl)

if ARGV[10] ~= '' then
  local size, sha = string.match(ARGV[10], '^(%d+) (%x+)$')
  redis.call('HSET', task, 'state', 'done', 'finished', ARGV[5], 'status', status,
             'headers', ARGV[7], 'body', ARGV[8], 'body_size', size, 'body_sha256', sha)
  redis.call('ZADD', prefix .. 'bodies:until', expires, id .. ':result')
  redis.call('PEXPIRE', body_key(id, 'result'), keep)
else
  redis.call('HSET', task, 'state', 'done', 'finished', ARGV[5], 'status', status,
             'headers', ARGV[7], 'body', ARGV[8])
  if was[12] or lapsed then
    drop_body(id, 'result')  -- what a writer spooled goes with its verdict
  end
end
redis.call('PEXPIRE', task, keep)
redis.call('ZREM', leases, id)
if was[11] then
  drop_body(id, 'request')
end
if was[7] then
  redis.call('PEXPIRE', prefix .. 'key:' .. was[7], keep)
end
if tombstones then
  if owner ~= '' then
    -- The key carries the owner hash; without one, the index entry is the
    -- whole tombstone (read_tombstone).
    redis.call('SET', prefix .. 'tomb:' .. id, owner, 'PX', ms(ttl + tombstone_ms / 1000))
  end
  redis.call('ZADD', prefix .. 'tombs', expires, id)
  trim_tombstones(now)
end
if was[8] then
  list_done(id, owner, was[4], expires)
  unlist_expired(now)
end
if was[6] then
  local cb = prefix .. 'cb:' .. id
  redis.call('HSET', cb, 'callback', was[6], 'status', tonumber(string.sub(status, 1, 3)),
             'finished', ARGV[5], 'attempts', 0, 'deadline', expires, 'claim', '')
  -- Kept a little past its deadline, so that it can never outlive the
  -- table even if no process ever settles it.
  redis.call('PEXPIREAT', cb, string.format('%d', math.ceil((expires + 3600) * 1000)))
  redis.call('ZADD', prefix .. 'callbacks', ARGV[5], id)
end
if was[9] then
  changed(id)
end
if was[10] then
  wake(id)
end
return 1
