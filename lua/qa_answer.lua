-- uses: hub_publish, qa_board
-- ARGV: answer, normalised question, cutoff (ms), max answers, max bytes, notification
-- channel. Returns {0, count}, {2} (as many answers as allowed), {3} (the
-- question is no longer on the board), {4} (its answers would exceed the bytes).
if not on_board(ARGV[2], ARGV[3]) then return {3} end
local stored = redis.call('HGET', KEYS[3], ARGV[2])
local answers = stored and cjson.decode(stored) or {}
if #answers >= tonumber(ARGV[4]) then return {2} end
answers[#answers + 1] = ARGV[1]
local encoded = cjson.encode(answers)
if #encoded > tonumber(ARGV[5]) then return {4} end
redis.call('HSET', KEYS[3], ARGV[2], encoded)
local ttl = redis.call('PTTL', KEYS[1])  -- the answers go with the board
if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
local version = redis.call('INCR', KEYS[4])
local question = redis.call('HGET', KEYS[2], ARGV[2])
-- the stored list is spliced in as it is: never an empty table, which
-- cjson would encode as {}
hub_publish(KEYS[5], ARGV[6], 'j', '{"type":"answers","version":' .. version ..
  ',"question":' .. cjson.encode(question) .. ',"count":' .. #answers ..
  ',"answers":' .. encoded .. '}')
return {0, #answers}
