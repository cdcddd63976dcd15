local function body_key(id, kind)
  return prefix .. 'body:' .. id .. ':' .. kind
end

-- Removes a spooled body and gives its bytes back to the budget.
local function drop_body(id, kind)
  local member = id .. ':' .. kind
  local held = redis.call('HGET', prefix .. 'bodies', member)
  if held then
    redis.call('DECRBY', prefix .. 'stored', held)
    redis.call('HDEL', prefix .. 'bodies', member)
  end
  redis.call('ZREM', prefix .. 'bodies:until', member)
  redis.call('UNLINK', body_key(id, kind))
end

-- Removes the bodies whose time is up (their task expired, their writer died).
local function reap_bodies(now)
  local due = redis.call('ZRANGEBYSCORE', prefix .. 'bodies:until', '-inf', now,
                         'LIMIT', 0, 100)
  for _, member in ipairs(due) do
    local id, kind = string.match(member, '^(.*):(%a+)$')
    drop_body(id, kind)
  end
end

-- Counts ``n`` more bytes of a body against the budget (-1: none); false when
-- they are not free. The body's time is renewed: ``seconds`` more for its
-- writer (unless it already lives as long as its task).
local function take_bytes(key, member, now, seconds, budget, n)
  if budget >= 0 and tonumber(redis.call('GET', prefix .. 'stored') or '0') + n > budget then
    return false
  end
  redis.call('INCRBY', prefix .. 'stored', n)
  redis.call('HINCRBY', prefix .. 'bodies', member, n)
  local member_until = redis.call('ZSCORE', prefix .. 'bodies:until', member)
  if not member_until or member_until ~= 'inf' then
    redis.call('ZADD', prefix .. 'bodies:until', now + seconds, member)
    redis.call('PEXPIRE', key, ms(seconds + 60))
  end
  return true
end

-- A task whose result is being spooled says so, so that its finish or
-- deletion removes what was written (only such tasks pay for that).
local function mark_spooling(member)
  local id, kind = string.match(member, '^(.*):(%a+)$')
  local task = prefix .. 'task:' .. id
  if kind == 'result' and redis.call('EXISTS', task) == 1 then
    redis.call('HSET', task, 'spooling', '1')
  end
end
