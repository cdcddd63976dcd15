-- Gives back the bytes a body reserved and did not write.
-- KEYS[1] body (for a cluster's routing). ARGV[4] member, ARGV[5] bytes.
-- Answers the bytes given back.
local held = tonumber(redis.call('HGET', prefix .. 'bodies', ARGV[4]) or '0')
local give = math.min(held, tonumber(ARGV[5]))
if give > 0 then
  redis.call('HINCRBY', prefix .. 'bodies', ARGV[4], -give)
  redis.call('DECRBY', prefix .. 'stored', give)
end
return give
