-- uses: hub_publish, qa_board
-- ARGV: text, normalised, now (ms), cutoff (ms: asked at or before it has
-- expired), max questions, ttl (ms), notification channel. Drops the expired, refuses a
-- duplicate, adds, rolls the oldest off past the maximum, publishes the list.
-- Returns {0, count} or {1} (duplicate).
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])) do remove(n) end
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {1} end
-- strictly increasing scores: the order of asking, even within one ms
local asked = tonumber(ARGV[3])
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= asked then asked = tonumber(newest[2]) + 1 end
redis.call('ZADD', KEYS[1], asked, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[5])
if over > 0 then
  for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, over - 1)) do remove(n) end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end  -- an idle board goes
local questions = {}
for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  questions[#questions + 1] = redis.call('HGET', KEYS[2], n)
end
local version = redis.call('INCR', KEYS[4])
hub_publish(KEYS[5], ARGV[7], 'j', cjson.encode(
  {type = 'questions', version = version, questions = questions, count = #questions}))
return {0, #questions}
