-- uses: signals
-- Sets the progress of a running task.
-- KEYS[1] task. ARGV[4] progress (JSON), ARGV[5] id.
local was = redis.call('HMGET', KEYS[1], 'state', 'watched')
if was[1] ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'progress', ARGV[4])
if was[2] then
  changed(ARGV[5])
end
return 1
