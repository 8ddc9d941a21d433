-- HSET only when the user still exists: a password or access change racing a
-- delete must not re-create a half user (no name, no roles) from its fields.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
