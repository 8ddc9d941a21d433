-- KEYS: doc hash, log; ARGV: from version, most entries.
-- -> {v, text, base, {log items after `from`}}: none when `from` is outside
-- the log or more than `most` behind. A log item is `<stream id> <entry JSON>`.
local st = redis.call('HMGET', KEYS[1], 'v', 'text', 'base')
local v, base = tonumber(st[1] or '0'), tonumber(st[3] or '0')
local from = tonumber(ARGV[1])
local entries = {}
if from >= base and from < v and v - from <= tonumber(ARGV[2]) then
  entries = redis.call('LRANGE', KEYS[2], from - base, -1)
end
return {v, st[2] or '', base, entries}
