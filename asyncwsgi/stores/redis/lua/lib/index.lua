-- The task list's index (for the tasks created 'listed'): moves a task
-- between its owner's state sets; 'all' holds it from creation to removal.
local function relist(id, owner, created, from, to)
  local base = prefix .. 'list:' .. owner .. ':'
  if from then
    redis.call('ZREM', base .. from, id)
  else
    redis.call('ZADD', base .. 'all', created, id)
  end
  if to then
    redis.call('ZADD', base .. to, created, id)
  else
    redis.call('ZREM', base .. 'all', id)
  end
end

-- Finished tasks whose record expired leave the index, a batch at a time.
local function unlist_expired(now)
  local unlist = prefix .. 'unlist'
  local due = redis.call('ZRANGEBYSCORE', unlist, '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(due) do
    local bar = string.find(member, '|', 1, true)
    local owner = string.sub(member, 1, bar - 1)
    local id = string.sub(member, bar + 1)
    if redis.call('EXISTS', prefix .. 'task:' .. id) == 0 then
      relist(id, owner, 0, 'done', nil)
    end
    redis.call('ZREM', unlist, member)
  end
end
