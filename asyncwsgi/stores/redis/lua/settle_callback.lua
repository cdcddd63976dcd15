-- Reports a claimed delivery: forgotten, or due again with one more attempt.
-- KEYS[1] cb:<id>, KEYS[2] callbacks. ARGV[4] id, ARGV[5] claim, ARGV[6] retry
-- at ('' when sent or given up). Answers 1, or 0 when the claim was lost.
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
