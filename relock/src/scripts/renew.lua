-- Extends the lease of a lock that the owner still holds.
--
-- KEYS[1]  lock hash `P:{K}`
-- ARGV[1]  owner token
-- ARGV[2]  lease in milliseconds
--
-- Reply:   1  renewed
--          0  this owner no longer holds the lock; nothing was changed
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
    return 0
end

redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
