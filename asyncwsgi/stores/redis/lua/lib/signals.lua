-- Wakes the waiters of a task (RedisStore.wait blocks on done:<id>); called
-- only for a task that a waiter marked 'waited'.
local function wake(id)
  local done = prefix .. 'done:' .. id
  redis.call('LPUSH', done, '1')
  redis.call('PEXPIRE', done, '60000')
end

-- Tells the event streams of a task that its state or progress changed;
-- called only for a task that a stream marked 'watched'.
local function changed(id)
  redis.call('PUBLISH', prefix .. 'changed:' .. id, '1')
end
