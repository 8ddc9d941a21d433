-- The document cap, shared by the scripts below: drop the documents unused
-- for `ttl` ms, then count `doc` in (refreshing its last use) unless it is
-- new and `cap` are live already. -> true when counted.
local function admit(docs, doc, now, ttl, cap)
  redis.call('ZREMRANGEBYSCORE', docs, '-inf', now - ttl)
  if not redis.call('ZSCORE', docs, doc) and redis.call('ZCARD', docs) >= cap then
    return false
  end
  redis.call('ZADD', docs, now, doc)
  redis.call('PEXPIRE', docs, ttl)
  return true
end
