-- uses: bodies
-- The bytes of the spooled bodies held, once those past their time are gone.
-- KEYS[1] stored. ARGV[4] now.
reap_bodies(tonumber(ARGV[4]))
return tonumber(redis.call('GET', prefix .. 'stored') or '0')
