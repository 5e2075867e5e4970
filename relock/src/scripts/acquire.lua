-- Takes the lock for a new hold, or reports how long the current holder's lease has left.
--
-- KEYS[1]  lock `P:{K}`: the string "<hold token> <fencing token> <pid> <since ms> <host>", with
--          "+" for the first space once the hold has refused someone (see batch.lua)
-- KEYS[2]  fencing counter `P:{K}:fence`: the last fencing token handed out for the key
-- ARGV[1]  hold token (32 hex digits), new for every hold
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  fencing counter retention in milliseconds (at least the lease)
-- ARGV[4]  holder metadata "<pid> <since ms> <host>"
--
-- Reply:   {1, fencing_token}  acquired; also for a retried request of a hold that already has the
--                              lock (the same grant again, so a client-side retry is harmless)
--          {0, pttl}           held by another hold; pttl as PTTL reports it
--
-- The fencing token is max(counter + 1, server time in microseconds): it keeps increasing when
-- the counter is gone (expired, a restart without persistence, a failover to a replica that had
-- not received it) as long as the server's clock does not step back by more than the time
-- between two grants of the key.
--
-- The lock is taken with the clock's token first (SET NX GET: one call takes a free lock, or
-- reads the holder of a taken one, so a refusal writes nothing but the mark); the counter is
-- then written and read in one call, and in the rare case where it is ahead of the clock (a
-- clock stepped back) both are written again. The script is atomic, so nobody sees the first
-- token.
local now = redis.call('TIME')
-- As text without string.format, which costs more than a call for a 16-digit number.
local text = now[1] .. string.rep('0', 6 - #now[2]) .. now[2]
-- A server that refuses writes (out of memory, too few replicas) refuses this one even when the
-- lock is taken: a refusal and a retried grant are then read with GET, as they need no write.
local value = redis.pcall('SET', KEYS[1], ARGV[1] .. ' ' .. text .. ' ' .. ARGV[4], 'NX', 'PX', ARGV[2], 'GET')
if type(value) == 'table' then
    local refused = value
    value = redis.call('GET', KEYS[1])
    if not value then
        return refused
    end
end
if value then
    if string.find(value, ARGV[1], 1, true) == 1 then
        return {1, tonumber(string.match(value, '^%x+[ +](%d+)'))}
    end
    -- Marks the hold as having refused someone ("+" after its token): its release is published.
    -- Only a hold not marked yet is written to, never a value that is not relock's.
    if string.find(value, '^' .. string.rep('%x', 32) .. ' ') then
        -- Best effort: a refusal must not fail because this write is refused (out of memory).
        redis.pcall('SET', KEYS[1], string.sub(value, 1, 32) .. '+' .. string.sub(value, 34), 'KEEPTTL')
    end
    return {0, redis.call('PTTL', KEYS[1])}
end

local fence = now[1] * 1000000 + now[2]
local last = redis.pcall('SET', KEYS[2], text, 'PX', ARGV[3], 'GET')
if type(last) == 'table' then
    -- A counter of another type, or a refusal of its key: the lock was free before this
    -- request, and is free again after it.
    redis.call('DEL', KEYS[1])
    return redis.error_reply(last.err .. ' (at the fencing counter ' .. KEYS[2] .. ')')
end
-- A counter that is not a number was overwritten by the clock's token, the fencing token then.
last = tonumber(last)
if last and last >= fence then
    fence = last + 1
    text = string.format('%.0f', fence)
    redis.call('SET', KEYS[2], text, 'PX', ARGV[3])
    redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. text .. ' ' .. ARGV[4], 'KEEPTTL')
end
return {1, fence}
