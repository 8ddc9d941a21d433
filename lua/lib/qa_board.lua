-- Shared by the scripts that change the board. KEYS: asked, question-index,
-- answers, version, hub stream.
local function remove(n)
  redis.call('ZREM', KEYS[1], n)
  redis.call('HDEL', KEYS[2], n)
  redis.call('HDEL', KEYS[3], n)
end
local function on_board(n, cutoff)
  local asked = redis.call('ZSCORE', KEYS[1], n)
  return asked and tonumber(asked) > tonumber(cutoff)
end
