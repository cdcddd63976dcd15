-- uses: signals index bodies
-- Forgets a task: its record, key, tombstone, bodies and index entries.
-- KEYS[1] task. ARGV[4] id. Answers 1, or 0 when there was no such task.
local id = ARGV[4]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local key = redis.call('HGET', KEYS[1], 'key')
if key then
  redis.call('DEL', prefix .. 'key:' .. key)
end
local was = redis.call('HMGET', KEYS[1], 'state', 'owner')
relist(id, was[2] or '', 0, was[1], nil)
redis.call('ZREM', prefix .. 'unlist', (was[2] or '') .. '|' .. id)
changed(id)
redis.call('DEL', KEYS[1], prefix .. 'tomb:' .. id)
redis.call('ZREM', prefix .. 'active', id)
redis.call('ZREM', prefix .. 'leases', id)
redis.call('ZREM', prefix .. 'tombs', id)
drop_body(id, 'request')
drop_body(id, 'result')
wake(id)
return 1
