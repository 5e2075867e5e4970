#!lua flags=allow-oom
-- Extends the lease of a hold that still has the lock: moves its deadline, refreshes the expiry.
--
-- KEYS[1]  lock `P:{K}` (see README.md beside this file for its forms)
-- ARGV[1]  hold token
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  retention in milliseconds (at least the lease): the key's expiry
--
-- Reply:   1  renewed: the deadline is now the server's time plus the lease
--          0  the hold no longer has the lock (released, force-released, or its deadline passed:
--             a hold past its deadline is free, and may have been seen free); nothing was changed
--
-- Flagged allow-oom: the value keeps its size, and a server out of memory must not end every
-- lease it carries.
local value = redis.call('GET', KEYS[1])
if not value or string.sub(value, 1, 32) ~= ARGV[1] then
    return 0
end
local head, deadline, holder = string.match(value, '^(%x+[ +]%d+) (%d+)(.*)$')
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
if not head or tonumber(deadline) <= now then
    return 0
end
redis.call('SET', KEYS[1], head .. ' ' .. (now + tonumber(ARGV[2])) .. holder, 'PX', ARGV[3])
return 1
