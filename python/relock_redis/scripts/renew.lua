#!lua flags=allow-oom
-- Extends the lease of a hold that still has the lock: moves its deadline, refreshes the expiry.
--
-- KEYS[1]  lock `P:{K}` (see README.md beside this file for its forms)
-- ARGV[1]  hold token
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  retention in milliseconds (at least the lease): the key's expiry
--
-- A shared hold (a reader or a permit) has its own deadline in the "*" form's list: the same
-- call renews it, so the watchdog's one pipeline per node carries every kind of hold.
--
-- Reply:   1  renewed: the deadline is now the server's time plus the lease
--          0  the hold no longer has the lock (released, force-released, or its deadline passed:
--             a hold past its deadline is free, and may have been seen free); nothing was changed
--
-- Flagged allow-oom: the value keeps its size, and a server out of memory must not end every
-- lease it carries.
local value = redis.call('GET', KEYS[1])
if not value then
    return 0
end
if string.sub(value, 1, 32) ~= ARGV[1] then
    if string.byte(value, 1) ~= 42 then
        return 0
    end
    -- A shared hold: its entry " <hold token> <deadline> <fencing token>" in the "*" form.
    local from, to = string.find(value, ' ' .. ARGV[1] .. ' ', 1, true)
    if not from then
        return 0
    end
    local deadline, rest = string.match(value, '^(%d+)(.*)$', to + 1)
    local time = redis.call('TIME')
    local now = time[1] * 1000 + math.floor(time[2] / 1000)
    if not deadline or tonumber(deadline) <= now then
        return 0
    end
    -- Never shorter than another holder's lease: the key's expiry already covers them all.
    local expiry = math.max(tonumber(ARGV[3]), redis.call('PTTL', KEYS[1]))
    redis.call('SET', KEYS[1], string.sub(value, 1, to) .. (now + tonumber(ARGV[2])) .. rest, 'PX', expiry)
    return 1
end
local head, deadline, holder = string.match(value, '^(%x+[ +]%d+) (%d+)(.*)$')
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
if not head or tonumber(deadline) <= now then
    return 0
end
redis.call('SET', KEYS[1], head .. ' ' .. (now + tonumber(ARGV[2])) .. holder, 'PX', ARGV[3])
return 1
