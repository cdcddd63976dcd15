-- uses: tombstones
-- A task's record, else its tombstone's owner.
-- KEYS[1] task, KEYS[2] tomb. ARGV[4] now.
-- Answers {0}, {1, field, value, ...} or {2, owner}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local answer = redis.call('HGETALL', KEYS[1])
  table.insert(answer, 1, 1)
  return answer
end
trim_tombstones(tonumber(ARGV[4]))
local owner = redis.call('GET', KEYS[2])
if owner then
  return {2, owner}
end
return {0}
