-- uses: signals index bodies
-- Forgets a task: its record, key, tombstone, bodies and index entries.
-- KEYS[1] task. ARGV[4] id. Answers 1, or 0 when there was no such task.
local id = ARGV[4]
local was = redis.call('HMGET', KEYS[1], 'state', 'owner', 'key', 'listed', 'watched',
                       'waited', 'request_body', 'spooling', 'body_size')
if not was[1] then
  return 0
end
local owner = was[2] or ''
if was[3] then
  redis.call('DEL', prefix .. 'key:' .. was[3])
end
if was[4] then
  list_remove(id, owner, was[1])
end
redis.call('DEL', KEYS[1], prefix .. 'tomb:' .. id)
redis.call('ZREM', leases, id)
if tombstones and was[1] == 'done' then
  redis.call('ZREM', prefix .. 'tombs', id)
end
if was[7] then
  drop_body(id, 'request')
end
if was[8] or was[9] then
  drop_body(id, 'result')
end
if was[5] then
  changed(id)
end
if was[6] then
  wake(id)
end
return 1
