-- uses: signals
-- Sets the progress of a running task.
-- KEYS[1] task. ARGV[4] progress (JSON), ARGV[5] id.
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'progress', ARGV[4])
changed(ARGV[5])
return 1
