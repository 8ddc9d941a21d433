-- Defines hub_publish(stream_key, notify_channel, kind, data) for Lua scripts: XADD
-- to the capped stream, refresh its TTL, publish the notification ("<id> <kind><data>")
-- on the channel's notification channel (core/keys.py names both, in one slot); returns
-- the id. On a Redis Cluster it publishes with SPUBLISH, on the shard of the slot.
-- An app script that changes its state and calls hub_publish in the same script
-- (its first line says `-- uses: hub_publish`) makes the change and its message
-- one atomic step, delivered in commit order. The placeholders below are the hub's
-- settings, filled in when the scripts are loaded (core/scripts.py).
local function hub_publish(stream_key, notify_channel, kind, data)
  local id = redis.call('XADD', stream_key, 'MAXLEN', '~', ${maxlen}, '*', 't', kind, 'd', data)
  redis.call('PEXPIRE', stream_key, ${ttl_ms})
  redis.call('${publish}', notify_channel, id .. ' ' .. kind .. data)
  return id
end
