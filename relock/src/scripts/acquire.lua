-- Takes the lock for an owner, or reports how long the current holder's lease has left.
--
-- KEYS[1]  lock hash `P:{K}`: field <owner> -> hold count, plus `_fence`, `_host`, `_pid`, `_since`
-- KEYS[2]  fencing counter `P:{K}:fence`
-- ARGV[1]  owner token (32 hex digits)
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  fencing counter retention in milliseconds
-- ARGV[4]  holder host name (metadata for `inspect`)
-- ARGV[5]  holder process id (metadata for `inspect`)
--
-- Reply:   {1, fencing_token, hold_count}  acquired (hold_count > 1: the same owner re-entered)
--          {0, pttl}                       held by another owner; pttl as PTTL reports it
local owner = ARGV[1]

if redis.call('EXISTS', KEYS[1]) == 0 then
    local fence = redis.call('INCR', KEYS[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    local now = redis.call('TIME')
    local since = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
    redis.call('HSET', KEYS[1], owner, 1, '_fence', fence, '_host', ARGV[4], '_pid', ARGV[5], '_since', since)
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, fence, 1}
end

if redis.call('HEXISTS', KEYS[1], owner) == 1 then
    local holds = redis.call('HINCRBY', KEYS[1], owner, 1)
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(redis.call('HGET', KEYS[1], '_fence')), holds}
end

return {0, redis.call('PTTL', KEYS[1])}
