-- Extends the leases of those of the tasks that are active.
-- KEYS[1] leases (not read: it routes the call in a cluster). ARGV[4] lease_until,
-- ARGV[5..] ids.
for i = 5, #ARGV do
  local task = prefix .. 'task:' .. ARGV[i]
  local state = redis.call('HGET', task, 'state')
  if state == 'running' or state == 'queued' then
    redis.call('HSET', task, 'lease_until', ARGV[4])
    redis.call('ZADD', prefix .. 'leases', ARGV[4], ARGV[i])
  end
end
return 0
