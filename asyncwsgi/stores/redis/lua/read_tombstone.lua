-- uses: tombstones
-- The owner hash of an expired task's tombstone, once the tombstones beyond
-- max_tombstones are gone (a read is when one may have become a tombstone).
-- A task without an owner has no key, only its entry in the index, scored
-- by its record's expiry: a tombstone until tombstone_ttl after that.
-- KEYS[1] tomb. ARGV[4] now, ARGV[5] id. Answers the owner hash ('' for
-- none) or nil.
local now = tonumber(ARGV[4])
trim_tombstones(now)
local owner = redis.call('GET', KEYS[1])
if owner then
  return owner
end
local expires = redis.call('ZSCORE', prefix .. 'tombs', ARGV[5])
if expires and tonumber(expires) + tombstone_ms / 1000 > now then
  return ''
end
return nil
