-- A writer waits for room: new tasks are refused meanwhile.
-- KEYS[1] room_wanted. ARGV[4] milliseconds; 0 ends that (the writer has
-- its room).
local room = KEYS[1]
if tonumber(ARGV[4]) == 0 then
  redis.call('DEL', room)
elseif redis.call('PTTL', room) < tonumber(ARGV[4]) then
  redis.call('SET', room, '1', 'PX', ARGV[4])
end
return 0
