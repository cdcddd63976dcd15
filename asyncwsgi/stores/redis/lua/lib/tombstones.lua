-- Keeps at most max_tombstones tombstones (finished tasks past their expiry,
-- in ``tombs`` by it): when there are more, those past tombstone_ttl leave
-- the index first (their keys expired by themselves), then the oldest.
local function trim_tombstones(now)
  local tombs = prefix .. 'tombs'
  if redis.call('ZCOUNT', tombs, '-inf', now) <= max_tombstones then
    return
  end
  redis.call('ZREMRANGEBYSCORE', tombs, '-inf', now - tombstone_ms / 1000)
  local excess = redis.call('ZCOUNT', tombs, '-inf', now) - max_tombstones
  if excess > 0 then
    local ids = redis.call('ZRANGEBYSCORE', tombs, '-inf', now, 'LIMIT', 0, excess)
    for _, id in ipairs(ids) do
      if redis.call('EXISTS', prefix .. 'task:' .. id) == 0 then
        redis.call('DEL', prefix .. 'tomb:' .. id)
        redis.call('ZREM', tombs, id)
      end
    end
  end
end
