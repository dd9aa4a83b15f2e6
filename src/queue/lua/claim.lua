-- Claim the head of a stage queue: queue -> in-flight with owner, lease and fencing token.
-- The caller reads the first few ids and passes their records as keys, so every key the
-- script touches is declared; when the head is not among them it answers "retry".
-- When the queue is empty and the caller is going to wait, it registers as an idle claimer
-- (atomically with finding the queue empty, so no enqueue can slip between the two unseen).
-- KEYS[1] stage queue (ZSet)
-- KEYS[2] stage in-flight (ZSet, score = lease deadline ms)
-- KEYS[3] fencing token sequence (string)
-- KEYS[4] live workers (ZSet, score = last seen ms)
-- KEYS[5] idle claimers of the stage (ZSet, score = registration deadline ms)
-- KEYS[6..] records of the candidate ids, in ARGV order
-- ARGV[1] worker id
-- ARGV[2] lease in ms
-- ARGV[3] running status ("processing" | "uploading")
-- ARGV[4] how long the caller will wait when the queue is empty, ms (0: it will not)
-- ARGV[5..] candidate ids
-- Returns {} when empty | {"retry"} | {"orphan", id} | {"claimed", id, token, field, value, ...}
local now = now_ms()
local head = redis.call('ZRANGE', KEYS[1], 0, 0)
if #head == 0 then
  local wait = tonumber(ARGV[4])
  if wait > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
    redis.call('ZADD', KEYS[5], now + wait, ARGV[1])
  end
  return {}
end
local id = head[1]
local rec = nil
for i = 5, #ARGV do
  if ARGV[i] == id then rec = KEYS[i + 1] end
end
if not rec then return {'retry'} end
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[5], ARGV[1])
if redis.call('EXISTS', rec) == 0 then return {'orphan', id} end
local deadline = now + tonumber(ARGV[2])
local token = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], deadline, id)
-- A failed task in the deliver stage only awaits its failure notification: it stays failed.
if redis.call('HGET', rec, 'status') ~= 'failed' then
  redis.call('HSET', rec, 'status', ARGV[3], 'progress', 0)
end
redis.call('HSET', rec, 'worker', ARGV[1], 'token', token,
  'lease_until', deadline, 'started_at', now, 'updated_at', now)
redis.call('HINCRBY', rec, 'attempts', 1)
redis.call('ZADD', KEYS[4], now, ARGV[1])
local out = {'claimed', id, tostring(token)}
local fields = redis.call('HGETALL', rec)
for i = 1, #fields do out[#out + 1] = fields[i] end
return out
