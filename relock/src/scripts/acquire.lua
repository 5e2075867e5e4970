-- Takes the lock for an owner, or reports how long the current holder's lease has left.
--
-- KEYS[1]  lock hash `P:{K}`: field <owner> -> hold count, `_fence` -> fencing token,
--          `_holder` -> "<pid> <acquired-at ms> <host>" (metadata for `inspect`)
-- KEYS[2]  fencing counter `P:{K}:fence`
-- ARGV[1]  owner token (32 hex digits)
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  fencing counter retention in milliseconds
-- ARGV[4]  holder metadata "<pid> <acquired-at ms> <host>"
--
-- Reply:   {1, fencing_token, hold_count}  acquired (hold_count > 1: the same owner re-entered)
--          {0, pttl}                       held by another owner; pttl as PTTL reports it
--
-- Every redis.call here costs server time under contention, so PTTL doubles as the existence
-- check and as the refusal's reply.
local pttl = redis.call('PTTL', KEYS[1])

if pttl == -2 then
    local fence = redis.call('INCR', KEYS[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    redis.call('HSET', KEYS[1], ARGV[1], 1, '_fence', fence, '_holder', ARGV[4])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, fence, 1}
end

if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
    local holds = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(redis.call('HGET', KEYS[1], '_fence')), holds}
end

return {0, pttl}
