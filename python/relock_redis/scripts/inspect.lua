-- Reads who holds a lock, for how much longer, and under which fencing token.
--
-- KEYS[1]  lock `P:{K}` (see README.md beside this file for its forms)
--
-- Reply:   {}                 the lock is free: nothing there, a tombstone, or a hold whose
--                             deadline has passed
--          {ttl ms, value}    held: the lease left, and the hold
--                             "<hold token><mark><fencing token> <deadline ms> <pid> <since ms> <host>"
--          {-1, value, pttl}  a value relock did not write (held until its key expires, PTTL's
--                             answer; -1 if it never does)
local value = redis.call('GET', KEYS[1])
if not value then
    return {}
end
if string.byte(value, 1) == 45 and string.find(value, '^%-%d+ %x+$') then
    return {}
end
local holder, deadline = string.match(value, '^(%x+)[ +]%d+ (%d+)')
if holder and #holder == 32 then
    local time = redis.call('TIME')
    local left = tonumber(deadline) - (time[1] * 1000 + math.floor(time[2] / 1000))
    if left <= 0 then
        return {}
    end
    return {left, value}
end
return {-1, value, redis.call('PTTL', KEYS[1])}
