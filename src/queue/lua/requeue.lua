-- Requeue a dead-lettered task for separation from scratch (an operator's decision).
-- KEYS[1] separate stage dead letters (ZSet)
-- KEYS[2] deliver stage dead letters (ZSet)
-- KEYS[3] deliver stage queue (ZSet): a failure notice still waiting there is dropped
-- KEYS[4] deliver stage delayed (ZSet): likewise
-- KEYS[5] deliver stage in-flight (ZSet): a notice being sent now makes the requeue wait
-- KEYS[6] task record (hash)
-- KEYS[7] separate stage queue (ZSet)
-- KEYS[8] enqueue clock (string)
-- KEYS[9] idle claimers of the separate stage (ZSet)
-- ARGV[1] task id
-- ARGV[2] max attempts per stage
-- ARGV[3] wake channel of the separate stage
-- Returns "requeued" | "missing" | "not_dead" | "busy"
if redis.call('EXISTS', KEYS[6]) == 0 then return 'missing' end
local dead_sep = redis.call('ZSCORE', KEYS[1], ARGV[1])
local dead_del = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not dead_sep and not dead_del then return 'not_dead' end
if redis.call('ZSCORE', KEYS[5], ARGV[1]) then return 'busy' end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local now = now_ms()
local priority = tonumber(redis.call('HGET', KEYS[6], 'priority'))
local score = score_of(next_tick(KEYS[8]), 6 - priority)
redis.call('HDEL', KEYS[6], 'error_code', 'error_message', 'finished_at', 'notify', 'retry_at',
  'result', 'webhook_log', 'worker')
redis.call('HSET', KEYS[6], 'status', 'queued', 'stage', 'separate', 'attempts', 0,
  'max_attempts', ARGV[2], 'score', score, 'token', '', 'progress', 0, 'queued_at', now,
  'updated_at', now)
redis.call('PERSIST', KEYS[6])
redis.call('ZADD', KEYS[7], score, ARGV[1])
wake(KEYS[9], ARGV[3], now)
return 'requeued'
