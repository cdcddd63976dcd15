-- The task list's index, only for the tasks created 'listed': per owner
-- hash (empty for none), 'active' (queued and running) and 'done', each by
-- creation time. A finished task is also in 'unlist' by its expiry (as
-- <owner>|<id>), from which it leaves the index when it expires.
local function list_key(owner, set)
  return prefix .. 'list:' .. owner .. ':' .. set
end

local function list_add(id, owner, created)
  redis.call('ZADD', list_key(owner, 'active'), created, id)
end

local function list_done(id, owner, created, expires)
  redis.call('ZREM', list_key(owner, 'active'), id)
  redis.call('ZADD', list_key(owner, 'done'), created, id)
  redis.call('ZADD', prefix .. 'unlist', expires, owner .. '|' .. id)
end

local function list_remove(id, owner, state)
  if state == 'done' then
    redis.call('ZREM', list_key(owner, 'done'), id)
    redis.call('ZREM', prefix .. 'unlist', owner .. '|' .. id)
  else
    redis.call('ZREM', list_key(owner, 'active'), id)
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
      redis.call('ZREM', list_key(owner, 'done'), id)
    end
    redis.call('ZREM', unlist, member)
  end
end
