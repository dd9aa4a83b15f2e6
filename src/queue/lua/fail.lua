-- Record a failed attempt: retry later (delayed set) or dead-letter it.
-- KEYS[1] stage in-flight (ZSet)
-- KEYS[2] stage delayed (ZSet, score = ready-at ms)
-- KEYS[3] stage dead letters (ZSet, score = time of death ms)
-- KEYS[4] task record
-- ARGV[1] task id
-- ARGV[2] fencing token
-- ARGV[3] error code
-- ARGV[4] error message
-- ARGV[5] "1" when the error is worth retrying
-- ARGV[6] backoff in ms before the retry
-- ARGV[7] retention of finished records in ms
-- ARGV[8] waiting status of the stage ("queued" | "separated")
-- ARGV[9] wake channel of the deliver stage when a final failure must still be notified
--         (separate stage: the uploader sends the failure webhook); "" otherwise
-- ARGV[10] attempts allowed in the deliver stage
-- KEYS[5] deliver stage queue (ZSet); the record key again when not notifying
-- KEYS[6] enqueue clock (string)
-- KEYS[7] idle claimers of the deliver stage (ZSet); the record key again when not notifying
-- Returns "stale" | "cancelled" | "retry" | "dead"
if redis.call('HGET', KEYS[4], 'token') ~= ARGV[2] or not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 'stale'
end
redis.call('ZREM', KEYS[1], ARGV[1])
local now = now_ms()
redis.call('HSET', KEYS[4], 'error_code', ARGV[3], 'error_message', ARGV[4], 'updated_at', now)
if redis.call('HGET', KEYS[4], 'cancel_requested') == '1' then
  cancelled(KEYS[4], ARGV[7], now)
  return 'cancelled'
end
local attempts = tonumber(redis.call('HGET', KEYS[4], 'attempts') or '0')
local max = tonumber(redis.call('HGET', KEYS[4], 'max_attempts') or '1')
if ARGV[5] == '1' and attempts < max then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[1])
  redis.call('HSET', KEYS[4], 'status', ARGV[8], 'token', '', 'retry_at', now + tonumber(ARGV[6]))
  return 'retry'
end
redis.call('ZADD', KEYS[3], now, ARGV[1])
finish(KEYS[4], 'failed', ARGV[7], now)
if ARGV[9] ~= '' then
  local priority = tonumber(redis.call('HGET', KEYS[4], 'priority'))
  local score = score_of(next_tick(KEYS[6]), 6 - priority)
  redis.call('HSET', KEYS[4], 'stage', 'deliver', 'attempts', 0, 'max_attempts', ARGV[10],
    'score', score, 'notify', 'pending')
  redis.call('ZADD', KEYS[5], score, ARGV[1])
  wake(KEYS[7], ARGV[9], now)
end
return 'dead'
