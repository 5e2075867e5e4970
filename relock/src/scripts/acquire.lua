-- Takes the lock for a new hold, or reports how long the current holder's lease has left.
--
-- KEYS[1]  lock `P:{K}` (see README.md beside this file for its forms)
-- ARGV[1]  hold token (32 hex digits), new for every hold
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  retention in milliseconds (at least the lease): the key's expiry
-- ARGV[4]  holder metadata "<pid> <since ms> <host>"
-- ARGV[5]  (optional) "try": the caller makes this one attempt and will not wait, so a refusal
--          by shared holders records no waiting writer
--
-- Reply:   {1, fencing token}  acquired; also for a retried request of a hold that already has
--                              the lock (the same grant again, so a client-side retry is harmless)
--          {0, ttl ms}         held by another hold, whose lease has this long left (PTTL's
--                              answer for a value that is not relock's: it is held until it expires)
--          {2, 0}              refused: this hold token was released already (the acquisition
--                              reached the server after its own release); nothing was written
--          an error            the hold token is not 32 lowercase hex digits, the fencing token
--                              would pass 2^53 - 1 (Lua numbers are doubles), a key of another
--                              type, or the server refused the write
--
-- The fencing token is max(last fencing token + 1, server time in microseconds), the last one
-- read from the hold or tombstone the key has; a free key with nothing in it gets the clock's.
-- A free key is taken with SET NX GET (one call takes it, or reads what is there); a tombstone or
-- an expired hold is then overwritten with a second SET. A live hold is marked "+" once it has
-- refused someone, so that its release is published. Shared holders (the "*" form) refuse it
-- while any is live, and the refusal records a waiting writer that new readers queue behind.
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
-- The clock's token as text without string.format, which costs more than a call.
local clock = time[1] .. string.rep('0', 6 - #time[2]) .. time[2]
local token = ARGV[1]
if #token ~= 32 or not string.find(token, '^[0-9a-f]+$') then
    -- A value holds hold tokens of exactly this form: any other would corrupt it.
    return redis.error_reply('relock: a hold token is 32 lowercase hex digits, not `' ..
        string.sub(token, 1, 64) .. '`')
end
local tail = ' ' .. (now + tonumber(ARGV[2])) .. ' ' .. ARGV[4]
-- A server that refuses writes (out of memory, too few replicas) refuses this one even when the
-- key is taken: a refusal and a retried grant are then read with GET, as they need no write.
local value = redis.pcall('SET', KEYS[1], token .. ' ' .. clock .. tail, 'NX', 'PX', ARGV[3], 'GET')
if type(value) == 'table' then
    local refused = value
    value = redis.call('GET', KEYS[1])
    if not value then
        return refused
    end
end
if not value then
    return {1, tonumber(clock)}
end

local last, sep
if string.byte(value, 1) == 45 then
    -- A tombstone "-<fencing token> <hold token>".
    local released
    last, released = string.match(value, '^%-(%d+) (%x+)$')
    if released == token then
        return {2, 0}
    end
else
    local holder, mark, fence, deadline = string.match(value, '^(%x+)([ +])(%d+) (%d+)')
    if holder and #holder == 32 then
        if holder == token then
            return {1, tonumber(fence)}
        end
        local left = tonumber(deadline) - now
        if left > 0 then
            if mark == ' ' then
                -- Best effort: a refusal must not fail because this write is refused (out of
                -- memory); the waiter then wakes when the lease ends instead.
                redis.pcall('SET', KEYS[1], string.sub(value, 1, 32) .. '+' .. string.sub(value, 34), 'KEEPTTL')
            end
            return {0, left}
        end
        -- A hold whose deadline has passed: the lock is free.
        last = fence
    elseif string.byte(value, 1) == 42 then
        -- Shared holds (readers, permits; see acquire_shared.lua): refused while any is live,
        -- and the refusal makes new readers queue behind this writer.
        local have, writer, waited, rest
        last, have, writer, waited, rest = string.match(value, '^%*(%d+) (%d+) (%d+) ([01])(.*)$')
        -- Only a list of `<32 hex> <deadline> <fence>` entries (a released hold's deadline
        -- negated) is relock's shared form.
        if last and (string.gsub(rest, ' %x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x %-?%d+ %d+', '')) ~= '' then
            last = nil
        end
        if last and string.find(rest, ' ' .. token .. ' -', 1, true) then
            -- This hold was released already (its released entry names it).
            return {2, 0}
        end
        if last then
            local longest = 0
            for deadline in string.gmatch(rest, ' %x+ (%-?%d+) %d+') do
                if tonumber(deadline) - now > longest then
                    longest = tonumber(deadline) - now
                end
            end
            if longest > 0 then
                if ARGV[5] ~= 'try' then
                    writer = math.max(tonumber(writer), now + longest + 1000)
                    redis.pcall('SET', KEYS[1], '*' .. last .. ' ' .. have .. ' ' .. string.format('%.0f', writer) .. ' 1' .. rest, 'KEEPTTL')
                end
                return {0, longest}
            end
            if waited == '1' then
                -- Readers may be queued behind this writer: its release is published.
                sep = '+'
            end
        end
    end
end
if not last then
    -- Not relock's value: never overwritten, held until its key expires.
    return {0, redis.call('PTTL', KEYS[1])}
end
-- Every step stays exact below 2^53 (9007199254740992): the last token must leave room for +1.
if #last > 16 or (#last == 16 and last > '9007199254740990') then
    return redis.error_reply('relock: the fencing token of ' .. KEYS[1] .. ' is ' .. last ..
        ', at the limit of exact arithmetic (2^53 - 1); no larger token can be handed out')
end
local fence, text = tonumber(clock), clock
if tonumber(last) >= fence then
    fence = tonumber(last) + 1
    text = string.format('%.0f', fence)
end
redis.call('SET', KEYS[1], token .. (sep or ' ') .. text .. tail, 'PX', ARGV[3])
return {1, fence}
