-- uses: bodies index
-- Inserts a queued task and binds its idempotency key, unless the key is
-- bound to a task that exists, the active tasks reach the limit, or the byte
-- budget lacks the room asked for. Only what the task uses is written.
-- KEYS[1] task. ARGV[4] id, ARGV[5] limit (-1: none), ARGV[6] now, ARGV[7]
-- lease score ('inf': none), ARGV[8] key ('' if none), ARGV[9] key value,
-- ARGV[10] byte budget (-1: none), ARGV[11] the bytes of it that must be
-- free, ARGV[12] owner hash, ARGV[13] created, ARGV[14] what the task uses
-- ('l': the task list, 'r': a spooled request body), ARGV[15..] field/value
-- pairs (with 'listed' and 'request_body' as ARGV[14] says). Answers 1 (created),
-- 0 (full), -1 (the byte budget is spent, or a writer waits for room) or the
-- value of a key already bound to a task that exists.
local id = ARGV[4]
local key = ARGV[8]
if key ~= '' then
  local held = redis.call('GET', prefix .. 'key:' .. key)
  if held and held ~= '' then
    local bound = cjson.decode(held)[1]
    if redis.call('EXISTS', prefix .. 'task:' .. bound) == 1 then
      return held
    end
  end
end
local limit = tonumber(ARGV[5])
if limit >= 0 and redis.call('ZCARD', leases) >= limit then
  return 0
end
local budget = tonumber(ARGV[10])
if budget >= 0 then
  reap_bodies(tonumber(ARGV[6]))
  local stored = tonumber(redis.call('GET', prefix .. 'stored') or '0')
  if stored >= budget or stored + tonumber(ARGV[11]) > budget
     or redis.call('EXISTS', prefix .. 'room_wanted') == 1 then
    return -1
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 15))
redis.call('ZADD', leases, ARGV[7], id)
local uses = ARGV[14]
if string.find(uses, 'r', 1, true) then
  -- The spooled request body now lives as long as its task does.
  redis.call('PERSIST', body_key(id, 'request'))
  redis.call('ZADD', prefix .. 'bodies:until', 'inf', id .. ':request')
end
if string.find(uses, 'l', 1, true) then
  list_add(id, ARGV[12], ARGV[13])
end
if key ~= '' then
  redis.call('SET', prefix .. 'key:' .. key, ARGV[9])
end
return 1
