-- Claims the completion callbacks that are due, pushing each past the claim.
-- KEYS[1] callbacks. ARGV[4] now, ARGV[5] claimed until, ARGV[6] limit, ARGV[7]
-- the claim. Answers {id, callback, status, finished, attempts, deadline, ...}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4], 'LIMIT', 0, ARGV[6])
local answer = {}
for _, id in ipairs(ids) do
  local cb = prefix .. 'cb:' .. id
  local fields = redis.call('HMGET', cb, 'callback', 'status', 'finished', 'attempts',
                            'deadline')
  if fields[1] then
    redis.call('ZADD', KEYS[1], ARGV[5], id)
    redis.call('HSET', cb, 'claim', ARGV[7])
    table.insert(answer, id)
    for _, value in ipairs(fields) do
      table.insert(answer, value)
    end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return answer
