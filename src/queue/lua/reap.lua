-- Return one expired lease to its queue with its original score (or dead-letter it when
-- it has used all its attempts).
-- KEYS[1] stage in-flight (ZSet)
-- KEYS[2] stage queue (ZSet)
-- KEYS[3] stage dead letters (ZSet)
-- KEYS[4] task record
-- ARGV[1] task id
-- ARGV[2] waiting status of the stage
-- ARGV[3] retention of finished records in ms
-- ARGV[4] wake channel of the stage
-- Returns "" when nothing was due | "requeued" | "dead" | "cancelled" | "orphan"
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
local now = now_ms()
if not deadline or tonumber(deadline) > now then return '' end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 0 then return 'orphan' end
local worker = redis.call('HGET', KEYS[4], 'worker') or '?'
redis.call('HSET', KEYS[4], 'error_code', 'lease_expired',
  'error_message', 'worker ' .. worker .. ' stopped renewing its lease', 'updated_at', now)
if redis.call('HGET', KEYS[4], 'cancel_requested') == '1' then
  cancelled(KEYS[4], ARGV[3], now)
  return 'cancelled'
end
local attempts = tonumber(redis.call('HGET', KEYS[4], 'attempts') or '0')
local max = tonumber(redis.call('HGET', KEYS[4], 'max_attempts') or '1')
if attempts >= max then
  redis.call('ZADD', KEYS[3], now, ARGV[1])
  finish(KEYS[4], 'failed', ARGV[3], now)
  return 'dead'
end
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[4], 'score'), ARGV[1])
redis.call('HSET', KEYS[4], 'status', ARGV[2], 'token', '')
redis.call('PUBLISH', ARGV[4], '1')
return 'requeued'
