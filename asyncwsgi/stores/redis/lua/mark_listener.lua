-- A waiter ('waited') or an event stream ('watched') marks an active task,
-- so that its changes wake it from now on (no task pays for listeners it
-- does not have).
-- KEYS[1] task. ARGV[4] the mark. Answers 1, or 0 when the task is not
-- active (there is nothing to wait for: read it again).
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[4], '1')
return 1
