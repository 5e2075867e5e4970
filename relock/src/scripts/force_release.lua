#!lua flags=allow-oom
-- Frees a lock whoever holds it (an operator's tool) and announces the release.
--
-- KEYS[1]  lock `P:{K}` (see README.md beside this file for its forms)
-- KEYS[2]  release channel `P:{K}:released`
-- ARGV[1]  (Redis Cluster only) "sharded": announce with SPUBLISH on the sharded channel
--
-- Shared holders (readers, permits) are all removed at once.
--
-- Reply:   {removed, last}  removed: 1 if a live hold was removed, 0 if the lock was free already;
--                           last: the last fencing token handed out for the key (0 if none is
--                           kept), so that a grant with a larger token is known to come after
--                           this release
--          an error         the key holds a value that is not relock's: it was left alone
--
-- The hold becomes the tombstone "-<fencing token> 000…0": it keeps the fencing token but names
-- no hold, so the removed hold's own release later finds it gone (and reports the loss).
local value = redis.call('GET', KEYS[1])
if not value then
    return {0, 0}
end
if string.byte(value, 1) == 45 then
    local last = string.match(value, '^%-(%d+) %x+$')
    if last then
        return {0, tonumber(last)}
    end
else
    local holder, fence, deadline = string.match(value, '^(%x+)[ +](%d+) (%d+)')
    if holder and #holder == 32 then
        redis.call('SET', KEYS[1], '-' .. fence .. ' ' .. string.rep('0', 32), 'KEEPTTL')
        local time = redis.call('TIME')
        if tonumber(deadline) <= time[1] * 1000 + math.floor(time[2] / 1000) then
            return {0, tonumber(fence)}
        end
        if ARGV[1] == 'sharded' then
            redis.call('SPUBLISH', KEYS[2], '')
        else
            redis.call('PUBLISH', KEYS[2], '')
        end
        return {1, tonumber(fence)}
    end
end
if string.byte(value, 1) == 42 then
    -- Shared holders (see acquire_shared.lua): all of them are removed.
    local last, rest = string.match(value, '^%*(%d+) %d+ %d+ [01](.*)$')
    -- Only a list of `<32 hex> <deadline> <fence>` entries (a released hold's deadline
    -- negated) is relock's shared form.
    if last and (string.gsub(rest, ' %x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x %-?%d+ %d+', '')) ~= '' then
        last = nil
    end
    if last then
        local time = redis.call('TIME')
        local now = time[1] * 1000 + math.floor(time[2] / 1000)
        local removed = 0
        for deadline in string.gmatch(rest, ' %x+ (%-?%d+) %d+') do
            if tonumber(deadline) > now then
                removed = 1
            end
        end
        redis.call('SET', KEYS[1], '-' .. last .. ' ' .. string.rep('0', 32), 'KEEPTTL')
        if removed == 1 then
            if ARGV[1] == 'sharded' then
                redis.call('SPUBLISH', KEYS[2], '')
            else
                redis.call('PUBLISH', KEYS[2], '')
            end
        end
        return {removed, tonumber(last)}
    end
end
return redis.error_reply('relock: ' .. KEYS[1] .. ' holds a value relock did not write; it was left alone')
