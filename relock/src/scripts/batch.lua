-- Acquires and releases holds: one call carries every request that queued up for the server
-- while the previous calls were in flight (group commit).
--
-- KEYS     the lock `P:{K}` of each request: the releases first, then the acquisitions; its
--          fencing counter is `P:{K}:fence` and its release channel `P:{K}:released` (all share
--          the hash tag `{K}`)
-- ARGV[1]  holder metadata "<pid> <since ms> <host>", written beside each grant
-- ARGV[2]  lease in milliseconds, for the acquisitions that give none of their own
-- ARGV[3]  fencing counter retention in milliseconds (at least the lease), likewise
-- ARGV[4]  how many of the requests are releases
-- then one argument per request, in the order of KEYS:
--   "<hold token>"                            release this hold (32 hex digits), or acquire
--                                             for it
--   "<hold token> <lease ms> <retention ms>"  acquire with a lease of its own
--
-- Reply: two items per request, in the order of KEYS:
--   acquire  1, fencing token   acquired; also for a retried request of a hold that already has
--                               the lock (the same grant again, so a client-side retry is harmless)
--            0, pttl            held by another hold; pttl as PTTL reports it
--   release  1, 0               released: the lock is free (and the channel was published to, if
--                               the hold had refused someone)
--            0, 0               the hold no longer has the lock; nothing was changed
--   either  -1, "<command> <error>"   this request failed (a key of another type, an ACL
--                               refusal, out of memory): the command that failed and its error;
--                               the other requests ran as if it had not been there
--
-- The requests of one call were all in flight at once, so any order is one they could have run
-- in; releases run first, so that a lock released and asked for in the same call is granted.
-- Each request runs as acquire.lua or release.lua would run it alone.
--
-- The lock is "<hold token> <fencing token> <pid> <since ms> <host>"; a refusal turns the space
-- after the hold token into "+" (the hold has had a waiter), and only such a hold's release is
-- published: a waiter subscribes after its first refusal and then asks again, so every waiter
-- that sleeps was refused by the hold whose release it waits for. The fencing token is
-- max(counter + 1, server time in microseconds): it keeps increasing when the counter is gone
-- (expired, a restart without persistence, a failover to a replica that had not received it) as
-- long as the server's clock does not step back by more than the time between two grants of the
-- key. The time is read once per call (the grants of one call are of distinct keys: a locker
-- has one request in flight per key, and no release runs after an acquisition).
--
-- Written for the server's CPU: no string is built that a request does not need (the token is
-- compared in place, a channel name made only to publish), and the fencing token's text and the
-- metadata after it are built once per call.
local holder, releases = ARGV[1], tonumber(ARGV[4])
-- `try` returns an error as a table instead of raising it.
local call, try, find, byte, sub, type = redis.call, redis.pcall, string.find, string.byte, string.sub, type
-- The server's clock, read at the first acquisition: in microseconds, as text (formatting a
-- 16-digit number with string.format costs more than a call), and as the lock value's tail.
local now, clock, tail

-- "+": the byte after the hold token of a lock that has refused someone.
local WAITED = 43
-- A hold that has refused nobody yet: only such a value is marked (any other value at a lock key
-- is not relock's, and is never written to).
local UNMARKED = '^' .. string.rep('%x', 32) .. ' '

-- The command being called, to name it if it fails.
local calling

local function acquire(lock, token, lease, retention)
    if not now then
        calling = 'TIME'
        local time = call('TIME')
        now = time[1] * 1000000 + time[2]
        clock = time[1] .. string.rep('0', 6 - #time[2]) .. time[2]
        tail = ' ' .. clock .. ' ' .. holder
    end
    -- Takes a free lock with the clock's token, or reads the holder of a taken one. A server
    -- that refuses writes (out of memory, too few replicas) refuses this one even when the lock
    -- is taken: a refusal and a retried grant are then read with GET, as they need no write.
    calling = 'SET'
    local value = try('SET', lock, token .. tail, 'NX', 'PX', lease, 'GET')
    if type(value) == 'table' then
        calling = 'GET'
        local refused = value
        value = call('GET', lock)
        if not value then
            calling = 'SET'
            error(refused)
        end
    end
    if value then
        if find(value, token, 1, true) == 1 then
            return 1, tonumber(string.match(value, '^%x+[ +](%d+)'))
        end
        if find(value, UNMARKED) then
            -- Best effort: a refusal must not fail because this write is refused (out of
            -- memory); the waiter then wakes when the lease ends instead.
            try('SET', lock, sub(value, 1, 32) .. '+' .. sub(value, 34), 'KEEPTTL')
        end
        calling = 'PTTL'
        return 0, call('PTTL', lock)
    end
    -- Writes the clock's token and reads the counter in one call; the rare case where the
    -- counter is ahead of the clock (a clock stepped back) writes both again (the script is
    -- atomic: nobody saw the first token). A counter that is not a number was overwritten by
    -- the clock's token, which is then the fencing token.
    local counter = lock .. ':fence'
    local last = try('SET', counter, clock, 'PX', retention, 'GET')
    if type(last) == 'table' then
        -- A counter of another type, or a refusal of its key: the lock was free before this
        -- request, and is free again after it.
        call('DEL', lock)
        error({err = last.err .. ' (at the fencing counter ' .. counter .. ')'})
    end
    last = tonumber(last)
    if last and last >= now then
        local fence = last + 1
        local text = string.format('%.0f', fence)
        call('SET', counter, text, 'PX', retention)
        call('SET', lock, token .. ' ' .. text .. ' ' .. holder, 'KEEPTTL')
        return 1, fence
    end
    return 1, now
end

local function release(lock, token)
    calling = 'GET'
    local value = call('GET', lock)
    if not value or find(value, token, 1, true) ~= 1 then
        return 0, 0
    end
    calling = 'DEL'
    call('DEL', lock)
    if byte(value, 33) == WAITED then
        calling = 'PUBLISH'
        call('PUBLISH', lock .. ':released', '')
    end
    return 1, 0
end

local reply, n = {}, 0
local lease, retention = ARGV[2], ARGV[3]
for k = 1, #KEYS do
    local ok, status, value
    local request = ARGV[k + 4]
    calling = 'the script'
    if k <= releases then
        ok, status, value = pcall(release, KEYS[k], request)
    elseif #request == 32 then
        ok, status, value = pcall(acquire, KEYS[k], request, lease, retention)
    else
        local token, own_lease, own_retention = string.match(request, '^(%x+) (%d+) (%d+)$')
        ok, status, value = pcall(acquire, KEYS[k], token, own_lease, own_retention)
    end
    if not ok then
        status, value = -1, calling .. ' ' .. (type(status) == 'table' and status.err or tostring(status))
    end
    reply[n + 1] = status
    reply[n + 2] = value
    n = n + 2
end
return reply
