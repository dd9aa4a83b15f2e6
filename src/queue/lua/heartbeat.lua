-- Renew a lease and record progress; tells the worker whether a cancel was requested.
-- KEYS[1] stage in-flight (ZSet)
-- KEYS[2] task record
-- KEYS[3] live workers (ZSet)
-- ARGV[1] task id
-- ARGV[2] fencing token
-- ARGV[3] lease in ms
-- ARGV[4] worker id
-- ARGV[5] progress 0-100, or "" to leave it
-- Returns -1 when the token is stale, else 1 when a cancel was requested, 0 otherwise.
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[2] or not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return -1
end
local now = now_ms()
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[1])
redis.call('HSET', KEYS[2], 'lease_until', deadline, 'updated_at', now)
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'progress', ARGV[5]) end
redis.call('ZADD', KEYS[3], now, ARGV[4])
if redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then return 1 end
return 0
