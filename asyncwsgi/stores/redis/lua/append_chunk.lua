-- uses: bodies
-- Appends one chunk to a spooled body and counts it against the budget.
-- KEYS[1] body. ARGV[4] member (<id>:<kind>), ARGV[5] now, ARGV[6] seconds the
-- writer has for its next chunk, ARGV[7] byte budget (-1: none), ARGV[8] the
-- chunks already written, ARGV[9] the chunk, ARGV[10] the bytes of it not yet
-- reserved. Answers 1, 0 (budget spent) or -1 (the body was removed
-- meanwhile: deleted, or its writer was too slow).
local now = tonumber(ARGV[5])
if tonumber(ARGV[7]) >= 0 then
  reap_bodies(now)  -- bytes past their time come back before they are counted
end
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[8]) then
  return -1
end
-- A writer that holds bytes of the budget (none to take now) but has no entry
-- in the ledger: it was given back (a delete before the first chunk).
if tonumber(ARGV[10]) == 0 and redis.call('HEXISTS', prefix .. 'bodies', ARGV[4]) == 0 then
  return -1
end
if ARGV[8] == '0' then
  mark_spooling(ARGV[4])
end
redis.call('RPUSH', KEYS[1], ARGV[9])
if not take_bytes(KEYS[1], ARGV[4], now, tonumber(ARGV[6]), tonumber(ARGV[7]),
                  tonumber(ARGV[10])) then
  redis.call('RPOP', KEYS[1])
  return 0
end
return 1
