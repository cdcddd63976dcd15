-- uses: index
-- One page of the task list, newest first by (created, id).
-- KEYS[1] list:<owner>:<state or all>. ARGV[4] now, ARGV[5] limit, ARGV[6] the
-- cursor's created ('' for the newest), ARGV[7] its id. Answers {id, {field,
-- value, ...}, ...}.
unlist_expired(tonumber(ARGV[4]))
-- Every field but the result's body: a page never loads bodies.
local listed = {'state', 'created', 'started', 'finished', 'progress', 'status', 'headers',
                'owner', 'lease_until', 'ttl', 'callback'}
local limit = tonumber(ARGV[5])
local answer = {}
local ids = {}
local top = '+inf'
if ARGV[6] ~= '' then
  -- Equal creation times are ordered by id (what ZRANGE does too): those
  -- tied with the cursor come first, then everything strictly older.
  local tied = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[6], ARGV[6])
  for i = #tied, 1, -1 do
    if tied[i] < ARGV[7] then
      table.insert(ids, tied[i])
    end
  end
  top = '(' .. ARGV[6]
end
local offset = 0
while #answer < limit * 2 do
  if #ids == 0 then
    ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], top, '-inf', 'LIMIT', offset, limit)
    offset = offset + limit
    if #ids == 0 then
      break
    end
  end
  local id = table.remove(ids, 1)
  local values = redis.call('HMGET', prefix .. 'task:' .. id, unpack(listed))
  local fields = {}
  for i, name in ipairs(listed) do
    if values[i] then
      table.insert(fields, name)
      table.insert(fields, values[i])
    end
  end
  if #fields == 0 then
    -- Expired before its turn in unlist_expired: drop it from the index.
    redis.call('ZREM', KEYS[1], id)
    offset = offset - 1
  else
    table.insert(answer, id)
    table.insert(answer, fields)
  end
end
return answer
