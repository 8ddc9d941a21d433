-- KEYS[1] the symbol's hash; ARGV: symbol, now (s), start price.
-- Walks the price one step per elapsed second (at most an hour's worth at once);
-- each step is derived from sha1(symbol:second), so it is the same on every worker.
local s = redis.call('HGETALL', KEYS[1])
local st = {}
for i = 1, #s, 2 do st[s[i]] = s[i + 1] end
local now = tonumber(ARGV[2])
local price, t = tonumber(st.price), tonumber(st.t)
if not price then
  price = tonumber(ARGV[3]); t = now
  st.open = price; st.high = price; st.low = price; st.volume = 0
end
local high, low, volume = tonumber(st.high), tonumber(st.low), tonumber(st.volume)
if now - t > 3600 then t = now - 3600 end
while t < now do
  t = t + 1
  local h = redis.sha1hex(ARGV[1] .. ':' .. t)
  local u = tonumber(string.sub(h, 1, 8), 16) / 4294967296
  local v = tonumber(string.sub(h, 9, 12), 16)
  price = math.max(0.01, price * (1 + (u - 0.5) * 0.004))
  if price > high then high = price end
  if price < low then low = price end
  volume = volume + 100 + v % 5000
end
redis.call('HSET', KEYS[1], 'price', price, 't', t, 'open', st.open, 'high', high,
           'low', low, 'volume', volume)
return {tostring(price), tostring(st.open), tostring(high), tostring(low), tostring(volume), t}
