-- Acquires and releases holds, in the order given: one call carries every request that queued up
-- for the server while the previous calls were in flight (group commit), or a single request.
--
-- KEYS     the lock `P:{K}` of each request, in order; its fencing counter is `P:{K}:fence` and
--          its release channel `P:{K}:released` (all share the hash tag `{K}`)
-- ARGV[1]  holder metadata "<pid> <since ms> <host>", written beside each grant
-- ARGV[2]  lease in milliseconds, for the acquisitions that give none of their own
-- ARGV[3]  fencing counter retention in milliseconds (at least the lease), likewise
-- then one argument per request, in the order of KEYS:
--   "<hold token>"                            acquire for this hold (32 hex digits)
--   "<hold token> <lease ms> <retention ms>"  acquire with a lease of its own
--   "-<hold token>"                           release this hold
--
-- Reply: two items per request, in order:
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
-- The lock is "<hold token> <fencing token> <pid> <since ms> <host>"; a refusal turns the space
-- after the hold token into "+" (the hold has had a waiter), and only such a hold's release is
-- published: a waiter subscribes after its first refusal and then asks again, so every waiter
-- that sleeps was refused by the hold whose release it waits for. The fencing token is
-- max(counter + 1, server time in microseconds): it keeps increasing when the counter is gone
-- (expired, a restart without persistence, a failover to a replica that had not received it) as
-- long as the server's clock does not step back by more than the time between two grants of the
-- key. The time is read once per call: a later grant in the same call is still past the counter.
local holder = ARGV[1]
-- The server's clock, read at the first grant: in microseconds, and as text (formatting a
-- 16-digit number with string.format costs more than the call itself).
local now, clock

-- "+": the byte after the hold token of a lock that has refused someone; "-": a release.
local WAITED, MINUS = 43, 45

-- The command being called, to name it if it fails.
local calling
local function call(command, ...)
    calling = command
    return redis.call(command, ...)
end

local function acquire(lock, counter, token, lease, retention)
    local value = call('GET', lock)
    if value then
        if string.sub(value, 1, 32) == token then
            return 1, tonumber(string.match(value, '^%x+[ +](%d+)'))
        end
        if string.byte(value, 33) ~= WAITED then
            -- Best effort: a refusal must not fail because this write is refused (out of
            -- memory); the waiter then wakes when the lease ends instead.
            redis.pcall('SET', lock, string.sub(value, 1, 32) .. '+' .. string.sub(value, 34), 'KEEPTTL')
        end
        return 0, call('PTTL', lock)
    end
    if not now then
        local time = call('TIME')
        now = time[1] * 1000000 + time[2]
        clock = time[1] .. string.rep('0', 6 - #time[2]) .. time[2]
    end
    local fence, text = now, clock
    -- Writes the clock's token and reads the counter in one call; the rare case where the
    -- counter is ahead of the clock (grants within one microsecond, a clock stepped back) writes
    -- again.
    local last = call('SET', counter, text, 'PX', retention, 'GET')
    if last and tonumber(last) >= fence then
        fence = tonumber(last) + 1
        text = string.format('%.0f', fence)
        call('SET', counter, text, 'PX', retention)
    end
    call('SET', lock, token .. ' ' .. text .. ' ' .. holder, 'PX', lease)
    return 1, fence
end

local function release(lock, channel, token)
    local value = call('GET', lock)
    if not value or string.sub(value, 1, 32) ~= token then
        return 0, 0
    end
    call('DEL', lock)
    if string.byte(value, 33) == WAITED then
        call('PUBLISH', channel, '')
    end
    return 1, 0
end

local reply = {}
for k = 1, #KEYS do
    local ok, status, value
    local lock, request = KEYS[k], ARGV[k + 3]
    calling = 'the script'
    if string.byte(request, 1) == MINUS then
        ok, status, value = pcall(release, lock, lock .. ':released', string.sub(request, 2))
    elseif #request == 32 then
        ok, status, value = pcall(acquire, lock, lock .. ':fence', request, ARGV[2], ARGV[3])
    else
        local token, lease, retention = string.match(request, '^(%x+) (%d+) (%d+)$')
        ok, status, value = pcall(acquire, lock, lock .. ':fence', token, lease, retention)
    end
    if not ok then
        local message = type(status) == 'table' and status.err or tostring(status)
        status, value = -1, calling .. ' ' .. message
    end
    reply[#reply + 1] = status
    reply[#reply + 1] = value
end
return reply
