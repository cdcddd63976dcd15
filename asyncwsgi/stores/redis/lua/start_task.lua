-- uses: signals
-- Queued -> running, with its lease.
-- KEYS[1] task. ARGV[4] id, ARGV[5] now, ARGV[6] lease_until. Answers 1, or 0
-- when the task is not queued.
local id = ARGV[4]
local was = redis.call('HMGET', KEYS[1], 'state', 'watched')
if was[1] ~= 'queued' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'running', 'started', ARGV[5], 'lease_until', ARGV[6])
redis.call('ZADD', leases, ARGV[6], id)
if was[2] then
  changed(id)
end
return 1
