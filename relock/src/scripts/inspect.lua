-- Reads who holds a lock, for how much longer, and under which fencing token.
--
-- KEYS[1]  lock `P:{K}` (see README.md beside this file for its forms)
--
-- Reply:   {}                 the lock is free: nothing there, a tombstone, or a hold whose
--                             deadline has passed
--          {ttl ms, value}    held: the lease left, and the hold
--                             "<hold token><mark><fencing token> <deadline ms> <pid> <since ms> <host>"
--                             or, for shared holders, the longest lease left and the "*" form
--                             with the live holders only (see acquire_shared.lua)
--          {-1, value, pttl}  a value relock did not write (held until its key expires, PTTL's
--                             answer; -1 if it never does)
local value = redis.call('GET', KEYS[1])
if not value then
    return {}
end
if string.byte(value, 1) == 45 and string.find(value, '^%-%d+ %x+$') then
    return {}
end
if string.byte(value, 1) == 42 then
    local head, rest = string.match(value, '^(%*%d+ %d+ %d+ [01])(.*)$')
    -- Only a list of `<32 hex> <deadline> <fence>` entries (a released hold's deadline
    -- negated) is relock's shared form.
    if head and (string.gsub(rest, ' %x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x %-?%d+ %d+', '')) ~= '' then
        head = nil
    end
    if head then
        local time = redis.call('TIME')
        local now = time[1] * 1000 + math.floor(time[2] / 1000)
        local live, longest = head, 0
        for holder, deadline, fence in string.gmatch(rest, ' (%x+) (%-?%d+) (%d+)') do
            local left = tonumber(deadline) - now
            if left > 0 then
                live = live .. ' ' .. holder .. ' ' .. deadline .. ' ' .. fence
                if left > longest then
                    longest = left
                end
            end
        end
        if longest == 0 then
            return {}
        end
        return {longest, live}
    end
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
