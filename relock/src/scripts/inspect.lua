-- Reads who holds a lock, for how much longer, and under which fencing token.
--
-- KEYS[1]  lock hash `P:{K}`
--
-- Reply:   {}                                      the lock is free
--          {pttl, field1, value1, field2, ...}     the hash's fields (HGETALL) after its PTTL
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
    return {}
end

local reply = redis.call('HGETALL', KEYS[1])
table.insert(reply, 1, pttl)
return reply
