-- uses: hub_publish, editor_admit
-- KEYS: doc hash, log, ids, docs, hub stream; ARGV: expected v, new text,
-- entry JSON without its closing `"v":N}`, op id, log length, notification channel,
-- log bytes, doc id, now ms, ttl ms, document cap.
-- -> {1, v} committed, {0, v} the version moved, {2, v} this op id was
-- committed as v, {3, v} the document cap is reached.
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return {0, v} end
local seen = redis.call('HGET', KEYS[3], ARGV[4])
if seen then return {2, tonumber(seen)} end
local ttl = tonumber(ARGV[10])
if not admit(KEYS[4], ARGV[8], tonumber(ARGV[9]), ttl, tonumber(ARGV[11])) then
  return {3, v}
end
v = v + 1
local entry = ARGV[3] .. '"v":' .. v .. '}'
local item = hub_publish(KEYS[5], ARGV[6], 'j', entry) .. ' ' .. entry
redis.call('HSET', KEYS[1], 'v', v, 'text', ARGV[2])
redis.call('HSETNX', KEYS[1], 'base', 0)
redis.call('RPUSH', KEYS[2], item)
redis.call('HSET', KEYS[3], ARGV[4], v)
local bytes = redis.call('HINCRBY', KEYS[1], 'bytes', #item)
local length = redis.call('LLEN', KEYS[2])
-- the oldest go, by count and by bytes; the newest always stays
while length > tonumber(ARGV[5]) or (bytes > tonumber(ARGV[7]) and length > 1) do
  local oldest = redis.call('LPOP', KEYS[2])
  local gap = string.find(oldest, ' ', 1, true)
  redis.call('HDEL', KEYS[3], cjson.decode(string.sub(oldest, gap + 1)).id)
  redis.call('HINCRBY', KEYS[1], 'base', 1)
  bytes = redis.call('HINCRBY', KEYS[1], 'bytes', -#oldest)
  length = length - 1
end
-- The channel's stream keeps what the log keeps (its catch-up is the log's):
-- nothing older than the oldest op left in the log.
local first = redis.call('LINDEX', KEYS[2], 0)
redis.call('XTRIM', KEYS[5], 'MINID', string.sub(first, 1, string.find(first, ' ', 1, true) - 1))
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
return {1, v}
