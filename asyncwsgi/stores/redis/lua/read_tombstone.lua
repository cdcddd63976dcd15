-- uses: tombstones
-- The owner hash of an expired task's tombstone, once the tombstones beyond
-- max_tombstones are gone (a read is when one may have become a tombstone).
-- KEYS[1] tomb. ARGV[4] now. Answers the owner hash ('' for none) or nil.
trim_tombstones(tonumber(ARGV[4]))
return redis.call('GET', KEYS[1])
