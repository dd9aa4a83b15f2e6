-- Cancel a task: removed at once while waiting; flagged while in flight (the worker sees
-- the flag on its next heartbeat and stops).
-- KEYS[1] separate queue, KEYS[2] separate in-flight, KEYS[3] separate delayed
-- KEYS[4] deliver queue, KEYS[5] deliver in-flight, KEYS[6] deliver delayed
-- KEYS[7] task record
-- ARGV[1] task id
-- ARGV[2] retention of finished records in ms
-- Returns {"missing"} | {"final", status} | {"cancelled"} | {"flagged"}
if redis.call('EXISTS', KEYS[7]) == 0 then return {'missing'} end
local status = redis.call('HGET', KEYS[7], 'status')
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return {'final', status}
end
local now = now_ms()
if redis.call('ZSCORE', KEYS[2], ARGV[1]) or redis.call('ZSCORE', KEYS[5], ARGV[1]) then
  redis.call('HSET', KEYS[7], 'cancel_requested', '1', 'updated_at', now)
  return {'flagged'}
end
for _, k in ipairs({KEYS[1], KEYS[3], KEYS[4], KEYS[6]}) do
  redis.call('ZREM', k, ARGV[1])
end
redis.call('HSET', KEYS[7], 'cancel_requested', '1')
cancelled(KEYS[7], ARGV[2], now)
return {'cancelled'}
