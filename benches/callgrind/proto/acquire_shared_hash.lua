-- PROTOTYPE (not used by relock): acquire_shared.lua's semantics with the shared form stored as a
-- Redis HASH at `P:{K}` instead of one string, so that a reader's acquisition costs O(1) in the
-- number of holders. Loaded and measured by benches/callgrind/drive.py (mode read-hash):
--
--     benches/callgrind/count.sh read-hash 5000 64      (from the repository root)
--
-- KEYS[1]  lock `P:{K}`
-- ARGV[1]  hold token (32 lowercase hex digits), ARGV[2] lease ms, ARGV[3] retention ms,
-- ARGV[4]  permits (0: a reader)
-- Reply:   as acquire_shared.lua: {1, fence} granted (a retried live hold: the same grant),
--          {0, ttl} refused, {2, 0} released already, {3, permits} mismatch, an error.
--
-- The hash (see HASH_LAYOUT.md beside the proto folder):
--   field "*"          "<last fence> <permits> <writer until> <waited> <live> <earliest> <latest> <seq>"
--                      live: live-form entries not yet reclaimed (some may be past their
--                      deadline); earliest: a lower bound of their deadlines; latest: an upper
--                      bound (for an exclusive refusal's ttl); seq: releases recorded so far
--   field <token>      "<deadline> <fence>" a holder, "-<deadline> <fence>" a released hold
--   field "~"          a fixed text longer than 64 bytes: keeps the hash a hash table
--   field "r<i>"       i = seq mod 32: the token of the i-th most recent released hold (a ring:
--                      recording release number seq drops the entry of release seq - 32)
-- Costs: one HMGET of the header and the caller's own field, one HSET, one PEXPIRE. Entries past
-- their deadline are reclaimed by one HGETALL only when now >= earliest (amortised: at most once
-- per lease per key while holders keep coming). Released entries are dropped by the ring only
-- (so they may outlive their deadline: at most 32 per key, until the key expires).
local LAYOUT = 'relock shared holds, hash layout prototype: see benches/callgrind/HASH_LAYOUT.md'
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
local clock = time[1] .. string.rep('0', 6 - #time[2]) .. time[2]
local key, token, lease, retention, permits = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if #token ~= 32 or not string.find(token, '^[0-9a-f]+$') then
    return redis.error_reply('relock: a hold token is 32 lowercase hex digits, not `' ..
        string.sub(token, 1, 64) .. '`')
end

-- The header's fields as text (as read, or as written), and as numbers where compared.
local last, have, until_ms, waited, live, earliest, latest, seq = nil, permits, '0', '0', 0, '0', '0', '0'
local writer, earliest_at, latest_at = 0, 0, 0
-- fresh: the key is created by this grant (its expiry is set, not raised); tombstoned: the token
-- of a tombstone to keep as a released entry when a string form is replaced.
local fresh, tombstoned
local got = redis.pcall('HMGET', key, '*', token)
if got.err then
    if not string.find(got.err, '^WRONGTYPE') then
        return got
    end
    -- A string: an exclusive hold or a tombstone (acquire.lua's forms), or a foreign value.
    local value = redis.call('GET', key)
    if string.byte(value, 1) == 45 then
        local released
        last, released = string.match(value, '^%-(%d+) (%x+)$')
        if released == token then
            return {2, 0}
        end
        if last and #released == 32 and released ~= string.rep('0', 32) then
            tombstoned = released
        end
    else
        local holder, mark, fence, deadline = string.match(value, '^(%x+)([ +])(%d+) (%d+)')
        if holder and #holder == 32 then
            local left = tonumber(deadline) - now
            if left > 0 then
                if mark == ' ' then
                    redis.pcall('SET', key, string.sub(value, 1, 32) .. '+' .. string.sub(value, 34), 'KEEPTTL')
                end
                return {0, left}
            end
            last = fence
        end
    end
    if not last then
        return {0, redis.call('PTTL', key)}
    end
    redis.call('DEL', key)
    fresh = true
else
    local header, own = got[1], got[2]
    if not header then
        if own or redis.call('EXISTS', key) == 1 then
            -- A hash relock did not write: never overwritten.
            return {0, redis.call('PTTL', key)}
        end
        fresh = true
    else
        last, have, until_ms, waited, live, earliest, latest, seq =
            string.match(header, '^(%d+) (%d+) (%d+) ([01]) (%d+) (%d+) (%d+) (%d+)$')
        if not last then
            return {0, redis.call('PTTL', key)}
        end
        -- Numbers for comparing; the texts are written back as they were when unchanged (a
        -- number's text costs a sprintf).
        writer, live, earliest_at, latest_at = tonumber(until_ms), tonumber(live),
            tonumber(earliest), tonumber(latest)
        if own then
            if string.byte(own, 1) == 45 then
                return {2, 0}
            end
            local deadline, fence = string.match(own, '^(%d+) (%d+)$')
            if tonumber(deadline) > now then
                -- A retried request of a live holder: the same grant.
                return {1, tonumber(fence)}
            end
        end
        local scanned
        if live > 0 and now >= earliest_at then
            -- Some holder may be past its deadline: the only O(holders) step, once per such
            -- moment. Live-form entries past their deadline are dropped; released ones stay.
            scanned = true
            local all, dead = redis.call('HGETALL', key), {}
            live, earliest_at = 0, 0
            for i = 1, #all, 2 do
                local field, entry = all[i], all[i + 1]
                if #field == 32 and string.byte(entry, 1) ~= 45 then
                    local deadline = tonumber(string.match(entry, '^%d+'))
                    if deadline <= now then
                        dead[#dead + 1] = field
                    else
                        live = live + 1
                        if earliest_at == 0 or deadline < earliest_at then
                            earliest_at = deadline
                        end
                    end
                end
            end
            earliest = string.format('%.0f', earliest_at)
            for i = 1, #dead, 1000 do
                redis.call('HDEL', key, unpack(dead, i, math.min(i + 999, #dead)))
            end
        end
        local refused
        if live > 0 and have ~= permits then
            refused = {3, tonumber(have)}
        elseif writer > now then
            refused = {0, writer - now}
        elseif permits ~= '0' and live >= tonumber(permits) then
            -- earliest is a lower bound of the soonest deadline: the waiter may wake early.
            refused = {0, earliest_at - now}
        end
        if refused then
            if scanned or (refused[1] == 0 and waited == '0') then
                if refused[1] == 0 then
                    waited = '1'
                end
                redis.pcall('HSET', key, '*', last .. ' ' .. have .. ' ' .. until_ms .. ' ' .. waited ..
                    ' ' .. live .. ' ' .. earliest .. ' ' .. latest .. ' ' .. seq)
            end
            return refused
        end
    end
end

local fence, text
if permits == '0' and last and last ~= '0' then
    fence, text = tonumber(last), last
else
    fence, text = tonumber(clock), clock
    if last then
        if #last > 16 or (#last == 16 and last > '9007199254740990') then
            return redis.error_reply('relock: the fencing token of ' .. key .. ' is ' .. last ..
                ', at the limit of exact arithmetic (2^53 - 1); no larger token can be handed out')
        end
        if tonumber(last) >= fence then
            fence = tonumber(last) + 1
            text = string.format('%.0f', fence)
        end
    end
end
local deadline = now + lease
local deadline_text = string.format('%.0f', deadline)
if live == 0 or deadline < earliest_at then
    earliest = deadline_text
end
if deadline > latest_at then
    latest = deadline_text
end
local header = text .. ' ' .. permits .. ' ' .. until_ms .. ' ' .. waited .. ' ' .. (live + 1) ..
    ' ' .. earliest .. ' ' .. latest .. ' '
if fresh then
    -- A new key: its "~" field's value, longer than hash-max-listpack-value (64 by default),
    -- makes Redis store the hash as a hash table from the start, so that each field's lookup is
    -- O(1) (a listpack's is a linear scan: 19% of the server's time with 64 readers).
    redis.call('HSET', key, '~', LAYOUT)
end
if tombstoned then
    -- The hold a replaced tombstone names stays refused, as a released entry (ring slot 0).
    redis.call('HSET', key, '*', header .. '1', token, deadline_text .. ' ' .. text,
        tombstoned, '-' .. (now + retention) .. ' ' .. last, 'r0', tombstoned)
else
    redis.call('HSET', key, '*', header .. seq, token, deadline_text .. ' ' .. text)
end
-- The key lives at least as long as every lease and the retention: set on a new key, only ever
-- raised on an existing one (GT), so no PTTL read is needed.
local expiry = lease > retention and ARGV[2] or ARGV[3]
if fresh then
    redis.call('PEXPIRE', key, expiry)
else
    redis.call('PEXPIRE', key, expiry, 'GT')
end
return {1, fence}
