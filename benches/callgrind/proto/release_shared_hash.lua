#!lua flags=allow-oom
-- PROTOTYPE (not used by relock): release.lua's shared branch with the shared form stored as a
-- Redis HASH at `P:{K}` (see acquire_shared_hash.lua for the fields). Loaded and measured by
-- benches/callgrind/drive.py (mode read-hash):
--
--     benches/callgrind/count.sh read-hash 5000 64      (from the repository root)
--
-- KEYS[1]  lock `P:{K}`, KEYS[2] its release channel `P:{K}:released`
-- ARGV[1]  hold token, ARGV[2] its fencing token (0: unknown), ARGV[3] retention ms,
-- ARGV[4]  (Redis Cluster only) "sharded"
-- Reply:   1 released (the holder's field becomes a released entry "-<deadline> <fence>");
--          2 released already (its released entry is there: a retry); 0 not held (an unknown
--          fencing token with no entry adds a released one until TIME + retention, the key's
--          expiry raised to at least that). A string key (an exclusive hold, a tombstone) is
--          release.lua's: this prototype answers an error for it (see HASH_LAYOUT.md for how
--          the product's release.lua would reach this branch: WRONGTYPE on its SET ... GET).
--
-- Costs: one HMGET (header, own field), one HSET (header, own field, ring slot); once 32 releases
-- are recorded, one HGET of the ring slot and one HDEL of the entry it names (the oldest: the
-- ring's invariant is that each released entry is named by exactly one slot, as only the ring
-- deletes released entries and a released token is never granted again while its entry lives).
local key, token, unknown = KEYS[1], ARGV[1], ARGV[2] == '0'
local got = redis.pcall('HMGET', key, '*', token)
if got.err then
    return redis.error_reply('prototype: ' .. got.err .. ' (a string form is release.lua\'s)')
end
local header, own = got[1], got[2]
if not header then
    if own or redis.call('EXISTS', key) == 1 then
        -- A hash relock did not write: left alone.
        return 0
    end
    -- Nothing there: a tombstone of this hold, as release.lua writes (no fencing token known).
    redis.call('SET', key, '-0 ' .. token, 'PX', ARGV[3])
    return 0
end
local last, permits, writer, waited, live, earliest, latest, seq =
    string.match(header, '^(%d+) (%d+) (%d+) ([01]) (%d+) (%d+) (%d+) (%d+)$')
if not last or #token ~= 32 then
    return 0
end
local entry, status
if own then
    if string.byte(own, 1) == 45 then
        -- A retried release: the first one took effect.
        return 2
    end
    -- Its deadline is not compared with the clock (as release.lua): a holder past its deadline
    -- that no acquisition reclaimed yet answers 1 too.
    entry, status, live = '-' .. own, 1, tonumber(live) - 1
elseif unknown then
    -- Its acquisition may still be on its way: named until the retention's end.
    local time = redis.call('TIME')
    entry = '-' .. (time[1] * 1000 + math.floor(time[2] / 1000) + tonumber(ARGV[3])) .. ' 0'
    status = 0
else
    return 0
end
seq = tonumber(seq)
local slot = 'r' .. (seq % 32)
if seq >= 32 then
    -- The ring is full: the slot names the oldest released entry, dropped now.
    local oldest = redis.call('HGET', key, slot)
    if oldest then
        redis.call('HDEL', key, oldest)
    end
end
redis.call('HSET', key, '*', last .. ' ' .. permits .. ' ' .. writer .. ' ' .. waited .. ' ' ..
    live .. ' ' .. earliest .. ' ' .. latest .. ' ' .. (seq + 1), token, entry, slot, token)
if status == 0 then
    -- A new released entry lives until TIME + retention: the key must live as long (raised only).
    redis.call('PEXPIRE', key, ARGV[3], 'GT')
    return 0
end
if ARGV[4] == 'sharded' then
    redis.call('SPUBLISH', KEYS[2], '')
elseif waited == '1' then
    redis.call('PUBLISH', KEYS[2], '')
end
return 1
