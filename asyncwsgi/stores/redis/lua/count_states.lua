-- Queued and running tasks, by the state of each active task (bounded by
-- the middleware's max_pending).
-- KEYS[1] leases. Answers {queued, running}.
local queued, running = 0, 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local state = redis.call('HGET', prefix .. 'task:' .. id, 'state')
  if state == 'queued' then
    queued = queued + 1
  elseif state == 'running' then
    running = running + 1
  end
end
return {queued, running}
