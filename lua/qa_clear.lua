-- uses: hub_publish
-- ARGV: notification channel. Empties the board; returns how many questions it had.
local count = redis.call('ZCARD', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local version = redis.call('INCR', KEYS[4])
hub_publish(KEYS[5], ARGV[1], 'j', '{"type":"clear","version":' .. version .. '}')
return count
