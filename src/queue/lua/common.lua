-- Shared helpers, prepended to every script by the Rust side (see queue/scripts.rs).
-- Time comes from the Redis server so that every machine agrees on it.
local _now_s, _now_us
local function now_parts()
  if not _now_s then
    local t = redis.call('TIME')
    _now_s, _now_us = tonumber(t[1]), tonumber(t[2])
  end
  return _now_s, _now_us
end
local function now_ms()
  local s, us = now_parts()
  return s * 1000 + math.floor(us / 1000)
end
-- A strictly increasing enqueue clock in ticks of 2^-19 s (~1.9 us): two tasks never share
-- a timestamp, so FIFO holds within a priority even in the same millisecond, and
-- tick * multiplier stays an exact double (< 2^53) for centuries.
local TICKS = 524288
local function next_tick(clock_key)
  local s, us = now_parts()
  local tick = s * TICKS + math.floor(us * TICKS / 1000000)
  local last = tonumber(redis.call('GET', clock_key) or '0')
  if tick <= last then tick = last + 1 end
  redis.call('SET', clock_key, string.format('%.0f', tick))
  return tick
end
-- The seed's score: timestamp (seconds) * (6 - priority), lowest first.
local function score_of(tick, multiplier)
  return string.format('%.17g', tick * multiplier / TICKS)
end
local function finish(rec, status, retention_ms, now)
  redis.call('HSET', rec, 'status', status, 'finished_at', now, 'updated_at', now, 'token', '')
  if tonumber(retention_ms) > 0 then
    redis.call('PEXPIRE', rec, retention_ms)
  end
end
local function cancelled(rec, retention_ms, now)
  redis.call('HSET', rec, 'error_code', 'cancelled', 'error_message', 'cancelled by the client')
  finish(rec, 'cancelled', retention_ms, now)
end
-- Wake idle claimers of a stage, if any is waiting (their registrations expire by themselves).
local function wake(waiting_key, channel, now)
  if redis.call('ZCOUNT', waiting_key, now, '+inf') > 0 then
    redis.call('PUBLISH', channel, '1')
  end
end
