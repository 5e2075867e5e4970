-- Extends the lease of a hold that still has the lock, and keeps its fencing counter alive.
--
-- KEYS[1]  lock `P:{K}`
-- KEYS[2]  fencing counter `P:{K}:fence`
-- ARGV[1]  hold token
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  fencing counter retention in milliseconds (at least the lease)
--
-- Reply:   1  renewed
--          0  the hold no longer has the lock; nothing was changed
local value = redis.call('GET', KEYS[1])
if not value or string.sub(value, 1, 32) ~= ARGV[1] then
    return 0
end

redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
