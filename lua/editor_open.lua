-- uses: editor_admit
-- KEYS: doc hash, log, ids, docs; ARGV: doc id, now ms, ttl ms, cap, create (0/1).
-- -> 1 live (its keys' TTLs refreshed), 2 not live (create=0), 0 the cap is reached.
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[5] == '0' then
  local last = redis.call('ZSCORE', KEYS[4], ARGV[1])
  if not last or tonumber(last) <= now - ttl then return 2 end
end
if not admit(KEYS[4], ARGV[1], now, ttl, tonumber(ARGV[4])) then return 0 end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
