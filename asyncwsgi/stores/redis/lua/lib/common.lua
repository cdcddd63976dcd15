-- Every script starts with this. KEYS are the main keys of a call; every
-- other key is derived from the prefix (ARGV[1]) inside the script, and the
-- step's own arguments start at ARGV[4].
local prefix = ARGV[1]
local tombstone_ms = tonumber(ARGV[2])
local max_tombstones = tonumber(ARGV[3])
-- Tombstones are kept only where they can be seen.
local tombstones = tombstone_ms > 0 and max_tombstones > 0
-- Queued and running tasks, by the end of their lease ('inf': none).
local leases = prefix .. 'leases'

-- Seconds as whole milliseconds for PEXPIRE and PX, at least one.
local function ms(seconds)
  local n = math.ceil(seconds * 1000)
  if n < 1 then n = 1 end
  return string.format('%d', n)
end
