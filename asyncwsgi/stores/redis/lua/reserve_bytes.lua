-- uses: bodies
-- Reserves bytes of the budget for a body about to be written.
-- KEYS[1] body. ARGV[4] member, ARGV[5] now, ARGV[6] seconds the writer has
-- for its first chunk, ARGV[7] byte budget, ARGV[8] bytes. Answers 1, or 0
-- when they are not free.
local now = tonumber(ARGV[5])
if tonumber(ARGV[7]) >= 0 then
  reap_bodies(now)  -- bytes past their time come back before they are counted
end
mark_spooling(ARGV[4])
if take_bytes(KEYS[1], ARGV[4], now, tonumber(ARGV[6]), tonumber(ARGV[7]),
              tonumber(ARGV[8])) then
  return 1
end
return 0
