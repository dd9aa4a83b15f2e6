-- Enqueue a new task into the separation stage.
-- KEYS[1] stage queue (ZSet, member = task id, score = seed score)
-- KEYS[2] task record (hash)
-- KEYS[3] enqueue clock (string)
-- KEYS[4] idempotency key (string -> "<task id> <request fingerprint>"); the record key
--         again when there is none
-- KEYS[5] idle claimers of the stage (ZSet, score = registration deadline ms)
-- KEYS[6] the owner's tasks (ZSet, member = task id, score = enqueue tick: unique, in
--         submission order); unused when
--         ARGV[9] is 0
-- ARGV[1] task id
-- ARGV[2] priority (1-5)
-- ARGV[3] request JSON
-- ARGV[4] max attempts per stage
-- ARGV[5] idempotency TTL in ms (0: no idempotency key)
-- ARGV[6] max queue depth (0: unlimited)
-- ARGV[7] wake channel of the stage
-- ARGV[8] fingerprint of the request (kept with the idempotency key)
-- ARGV[9] most tasks kept in the owner's list (0: the task has no owner)
-- Returns {"created", id, score} | {"existing", id, ""} | {"reused", id, ""} | {"full", depth, ""}
-- ("reused": the key maps to a task submitted with another request)
local idem = tonumber(ARGV[5]) > 0
if idem then
  local existing = redis.call('GET', KEYS[4])
  if existing then
    -- Rewrite the key unchanged: a demoted master must refuse this (READONLY) instead of
    -- answering from data a failover is about to discard, and the caller's WAIT then
    -- covers the original write too (the replication stream is ordered).
    redis.call('SET', KEYS[4], existing, 'KEEPTTL')
    local space = string.find(existing, ' ', 1, true)
    if not space then return {'existing', existing, ''} end -- a key from before fingerprints
    local id = string.sub(existing, 1, space - 1)
    if string.sub(existing, space + 1) ~= ARGV[8] then return {'reused', id, ''} end
    return {'existing', id, ''}
  end
end
local max_depth = tonumber(ARGV[6])
if max_depth > 0 then
  local depth = redis.call('ZCARD', KEYS[1])
  if depth >= max_depth then return {'full', tostring(depth), ''} end
end
local priority = tonumber(ARGV[2])
local tick = next_tick(KEYS[3])
local score = score_of(tick, 6 - priority)
local now = now_ms()
redis.call('HSET', KEYS[2],
  'id', ARGV[1], 'status', 'queued', 'stage', 'separate', 'priority', priority,
  'request', ARGV[3], 'attempts', 0, 'max_attempts', ARGV[4], 'score', score,
  'created_at', now, 'updated_at', now, 'queued_at', now, 'progress', 0)
redis.call('ZADD', KEYS[1], score, ARGV[1])
local owned = tonumber(ARGV[9])
if owned > 0 then
  redis.call('ZADD', KEYS[6], string.format('%.0f', tick), ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -owned - 1)
end
if idem then redis.call('SET', KEYS[4], ARGV[1] .. ' ' .. ARGV[8], 'PX', ARGV[5]) end
wake(KEYS[5], ARGV[7], now)
return {'created', ARGV[1], score}
