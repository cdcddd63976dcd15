-- uses: tombstones bodies index
-- Inserts a queued task and binds its idempotency key, unless the key is
-- bound to a task that exists, the active tasks reach the limit, or the byte
-- budget lacks the room asked for.
-- KEYS[1] task. ARGV[4] id, ARGV[5] limit (-1: none), ARGV[6] now, ARGV[7]
-- created, ARGV[8] key ('' if none), ARGV[9] key value, ARGV[10] byte budget
-- (-1: none), ARGV[11] the bytes of it that must be free, ARGV[12..]
-- field/value pairs. Answers 1 (created), 0 (full), -1 (the byte budget is
-- spent, or a writer waits for room) or the value of a key already bound to a
-- task that exists.
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
