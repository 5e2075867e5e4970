-- Drops one hold of an owner; frees the lock and announces it when the last hold goes.
--
-- KEYS[1]  lock hash `P:{K}`
-- ARGV[1]  owner token
-- ARGV[2]  release channel `P:{K}:released`
--
-- Reply:   0   released: the lock is free and the channel was published to
--          n   n > 0 holds of this owner remain (cross-process re-entry)
--          -1  this owner does not hold the lock (the lease ended or it was force-released);
--              nothing was changed
local holds = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if not holds then
    return -1
end

if holds > 1 then
    return redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
end

redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 0
