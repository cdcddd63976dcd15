-- uses: index
-- One page of an owner's task list, newest first by (created, id): the
-- 'active' and 'done' sets merged (or one of them, for a state), each read
-- a page at a time from the cursor on; a task whose record expired leaves
-- the index as it is met.
-- KEYS[1] list:<owner>:active, KEYS[2] list:<owner>:done. ARGV[4] now,
-- ARGV[5] limit, ARGV[6] the cursor's created ('' for the newest), ARGV[7]
-- its id, ARGV[8] the state asked for ('' for any). Answers {id, {field,
-- value, ...}, ...}.
unlist_expired(tonumber(ARGV[4]))
-- Every field but the result's body: a page never loads bodies.
local listed = {'state', 'created', 'started', 'finished', 'progress', 'status', 'headers',
                'owner', 'lease_until', 'ttl', 'callback'}
local limit = tonumber(ARGV[5])
local after, after_id, want = ARGV[6], ARGV[7], ARGV[8]

local function walker(key)
  local walk = {key = key, buffer = {}, offset = 0, top = '+inf', ended = false}
  if after ~= '' then
    -- Equal creation times are ordered by id (as ZRANGE orders them): those
    -- tied with the cursor come first, then everything strictly older.
    local tied = redis.call('ZRANGEBYSCORE', key, after, after)
    for i = #tied, 1, -1 do
      if tied[i] < after_id then
        table.insert(walk.buffer, {tied[i], tonumber(after)})
      end
    end
    walk.top = '(' .. after
  end
  return walk
end

local function peek(walk)
  if #walk.buffer == 0 and not walk.ended then
    local page = redis.call('ZREVRANGEBYSCORE', walk.key, walk.top, '-inf', 'WITHSCORES',
                            'LIMIT', walk.offset, limit)
    walk.offset = walk.offset + #page / 2
    walk.ended = #page == 0
    for i = 1, #page, 2 do
      table.insert(walk.buffer, {page[i], tonumber(page[i + 1])})
    end
  end
  return walk.buffer[1]
end

local walks = {}
if want ~= 'done' then
  table.insert(walks, walker(KEYS[1]))
end
if want == '' or want == 'done' then
  table.insert(walks, walker(KEYS[2]))
end
local answer = {}
while #answer < limit * 2 do
  local best, from = nil, nil
  for _, walk in ipairs(walks) do
    local head = peek(walk)
    if head and (not best or head[2] > best[2] or (head[2] == best[2] and head[1] > best[1])) then
      best, from = head, walk
    end
  end
  if not best then
    break
  end
  table.remove(from.buffer, 1)
  local id = best[1]
  local values = redis.call('HMGET', prefix .. 'task:' .. id, unpack(listed))
  if not values[1] then
    -- Expired before its turn in unlist_expired: it leaves the index.
    redis.call('ZREM', from.key, id)
    from.offset = from.offset - 1
  elseif want == '' or values[1] == want then
    local fields = {}
    for i, name in ipairs(listed) do
      if values[i] then
        table.insert(fields, name)
        table.insert(fields, values[i])
      end
    end
    table.insert(answer, id)
    table.insert(answer, fields)
  end
end
return answer
