-- uses: hub_publish
-- A background job's change and its message in one step (workers/jobs.py JobStore.update).
-- KEYS: the job's hash, its channel's stream.
-- ARGV: notification channel, ttl seconds, the states it may change from (comma-separated; '' = any),
--       the event to publish (JSON; '' = none), then field, value, field, value...
-- Changes nothing (-> false) when the job is gone or in another state: a job already
-- failed or cancelled is not brought back by a late report. -> the event's id, or 'ok'.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if ARGV[3] ~= '' then
  local allowed = false
  for from in string.gmatch(ARGV[3], '[^,]+') do
    if from == state then allowed = true end
  end
  if not allowed then return false end
end
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if ARGV[4] ~= '' then return hub_publish(KEYS[2], ARGV[1], 'j', ARGV[4]) end
return 'ok'
