-- Move one due task from the delayed set back to its queue, with its original score.
-- KEYS[1] stage delayed (ZSet)
-- KEYS[2] stage queue (ZSet)
-- KEYS[3] task record
-- ARGV[1] task id
-- ARGV[2] wake channel of the stage
-- Returns 1 when moved, 0 otherwise.
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > now_ms() then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
local score = redis.call('HGET', KEYS[3], 'score')
if not score then return 0 end
redis.call('ZADD', KEYS[2], score, ARGV[1])
redis.call('PUBLISH', ARGV[2], '1')
return 1
