-- KEYS: segments list, its byte count, its version; ARGV: segment, max bytes,
-- max segments, new version. Appends one segment, rolls the oldest off past
-- either bound, and sets the version that keys the workers' welcome caches.
-- The byte count is rebuilt from the list when missing (a history written
-- before it was kept, or a lost key), so the bound holds for old data too.
if redis.call('EXISTS', KEYS[2]) == 0 then
  local total = 0
  for _, s in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do total = total + #s end
  redis.call('SET', KEYS[2], total)
end
redis.call('RPUSH', KEYS[1], ARGV[1])
local bytes = redis.call('INCRBY', KEYS[2], #ARGV[1])
local count = redis.call('LLEN', KEYS[1])
while count > 0 and (bytes > tonumber(ARGV[2]) or count > tonumber(ARGV[3])) do
  local oldest = redis.call('LPOP', KEYS[1])
  bytes = redis.call('DECRBY', KEYS[2], #oldest)
  count = count - 1
end
if count == 0 then redis.call('SET', KEYS[2], 0) end
redis.call('SET', KEYS[3], ARGV[4])
return count
