-- Reads who holds a lock, for how much longer, and under which fencing token.
--
-- KEYS[1]  lock `P:{K}`
--
-- Reply:   {}             the lock is free
--          {pttl, value}  the lease left, and "<hold token> <fencing token> <pid> <since ms> <host>"
local value = redis.call('GET', KEYS[1])
if not value then
    return {}
end

return {redis.call('PTTL', KEYS[1]), value}
