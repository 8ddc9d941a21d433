-- uses: hub_publish
-- KEYS: the channel's stream; ARGV: its notification channel, kind ('j' JSON or 't' text), data.
-- -> the message id (core/stream_log.py: StreamLog.publish)
return hub_publish(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
