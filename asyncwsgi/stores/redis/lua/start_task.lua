-- uses: signals index
-- Queued -> running, with its lease.
-- KEYS[1] task. ARGV[4] id, ARGV[5] now, ARGV[6] lease_until. Answers 1, or 0
-- when the task is not queued.
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'running', 'started', ARGV[5], 'lease_until', ARGV[6])
redis.call('ZADD', prefix .. 'leases', ARGV[6], ARGV[4])
local was = redis.call('HMGET', KEYS[1], 'owner', 'created')
relist(ARGV[4], was[1] or '', was[2], 'queued', 'running')
changed(ARGV[4])
return 1
