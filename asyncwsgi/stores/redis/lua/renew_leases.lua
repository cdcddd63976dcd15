-- Extends the leases of those of the tasks that are active (in ``leases``).
-- KEYS[1] leases. ARGV[4] lease_until, ARGV[5..] ids.
for i = 5, #ARGV do
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[4], ARGV[i]) == 1 then
    redis.call('HSET', prefix .. 'task:' .. ARGV[i], 'lease_until', ARGV[4])
  end
end
return 0
