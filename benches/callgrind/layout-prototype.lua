-- NOT a relock script: a prototype of another Redis layout, kept only to count what it would cost
-- the server (`BATCH=benches/callgrind/layout-prototype.lua benches/callgrind/count.sh batch 20000 16`).
-- Same arguments and replies as relock/src/scripts/batch.lua.
--
-- The fencing token lives in the lock key itself, which is never deleted: a hold is
-- "<hold token> <fencing token> <deadline ms> <holder>" (the lease is the deadline, checked
-- against the server's clock), a released lock the tombstone "-<fencing token>", and the key
-- expires after the counter's retention, refreshed by every write. Acquire and release are then
-- one `SET … GET` each, with a restore in the rare case where the key turned out to be someone
-- else's live hold. Left out (rare paths, or small): a tombstone ahead of the clock, the refusal
-- mark and the release announcement, errors per request.
--
-- It departs from DESIGN.md's layout (no `P:{K}:fence`; `PEXPIRE` is the retention, not the
-- lease), which is why it is a measurement here and not a change.
local holder, releases = ARGV[1], tonumber(ARGV[4])
local call, find, byte, sub = redis.call, string.find, string.byte, string.sub
local time = call('TIME')
local now = time[1] * 1000000 + time[2]
local now_ms = math.floor(now / 1000)
local clock = time[1] .. string.rep('0', 6 - #time[2]) .. time[2]
local lease, retention = tonumber(ARGV[2]), ARGV[3]
local tail = ' ' .. clock .. ' ' .. (now_ms + lease) .. ' ' .. holder
local function acquire(lock, token)
    local old = call('SET', lock, token .. tail, 'PX', retention, 'GET')
    if old and byte(old, 1) ~= 45 then
        local f, d = string.match(old, '^%x+[ +](%d+) (%d+)')
        if tonumber(d) > now_ms then
            call('SET', lock, old, 'PX', retention)
            return 0, tonumber(d) - now_ms
        end
    end
    return 1, now
end
local function release(lock, token)
    local old = call('SET', lock, '-' .. clock, 'PX', retention, 'GET')
    if old and find(old, token, 1, true) == 1 then
        return 1, 0
    end
    if old then call('SET', lock, old, 'PX', retention) else call('DEL', lock) end
    return 0, 0
end
local reply, n = {}, 0
for k = 1, #KEYS do
    local ok, status, value
    if k <= releases then
        ok, status, value = pcall(release, KEYS[k], ARGV[k + 4])
    else
        ok, status, value = pcall(acquire, KEYS[k], ARGV[k + 4])
    end
    reply[n + 1] = status
    reply[n + 2] = value
    n = n + 2
end
return reply
