-- Finish the current stage: in-flight -> next stage queue, or -> final state.
-- KEYS[1] current stage in-flight (ZSet)
-- KEYS[2] task record
-- KEYS[3] next stage queue (ZSet); the record key again when final
-- KEYS[4] enqueue clock (string)
-- KEYS[5] idle claimers of the next stage (ZSet); the record key again when final
-- ARGV[1] task id
-- ARGV[2] fencing token
-- ARGV[3] "next" | "final"
-- ARGV[4] result JSON to store, or "" to leave it
-- ARGV[5] retention of finished records in ms
-- ARGV[6] wake channel of the next stage
-- ARGV[7] final status when ARGV[3] is "final" ("succeeded" | "failed")
-- ARGV[8] attempts allowed in the next stage
-- Returns "stale" | "cancelled" | "ok"
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[2] or not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 'stale'
end
redis.call('ZREM', KEYS[1], ARGV[1])
local now = now_ms()
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'result', ARGV[4]) end
-- A cancel stops a task between stages; once the last stage is done, the work stands.
if ARGV[3] == 'next' and redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then
  cancelled(KEYS[2], ARGV[5], now)
  return 'cancelled'
end
if ARGV[3] == 'next' then
  local priority = tonumber(redis.call('HGET', KEYS[2], 'priority'))
  local score = score_of(next_tick(KEYS[4]), 6 - priority)
  redis.call('HSET', KEYS[2], 'status', 'separated', 'stage', 'deliver', 'attempts', 0,
    'max_attempts', ARGV[8],
    'score', score, 'progress', 0, 'token', '', 'updated_at', now, 'separated_at', now,
    'error_code', '', 'error_message', '')
  redis.call('ZADD', KEYS[3], score, ARGV[1])
  wake(KEYS[5], ARGV[6], now)
else
  if ARGV[7] == 'failed' then
    redis.call('HSET', KEYS[2], 'notify', 'done')
  else
    redis.call('HSET', KEYS[2], 'progress', 100)
  end
  finish(KEYS[2], ARGV[7], ARGV[5], now)
end
return 'ok'
