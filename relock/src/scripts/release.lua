#!lua flags=allow-oom
-- Releases one hold: leaves a tombstone in its place, and announces the release.
--
-- KEYS[1]  lock `P:{K}` (see README.md beside this file for its forms)
-- KEYS[2]  release channel `P:{K}:released` (a key name so that the slot check covers it)
-- ARGV[1]  hold token
-- ARGV[2]  the hold's fencing token, or 0 when the caller does not know it (an acquisition whose
--          answer never came)
-- ARGV[3]  retention in milliseconds: the expiry of a tombstone written where nothing was
-- ARGV[4]  (Redis Cluster only) "sharded": announce with SPUBLISH on the sharded channel; on one
--          server only a hold that has refused someone ("+" after its token) is announced
--
-- The announcement's message is "1" for a shared hold (one permit or read hold returned: a
-- client wakes one permit waiter) and empty for an exclusive hold (anything may be free: every
-- waiter looks).
--
-- A shared hold (a reader or a permit, in the "*" form) leaves the holders: its entry becomes a
-- released hold's, " <hold token> -<deadline> <fencing token>", moved to the end of the list,
-- which stays with the last fencing token and any waiting writer. When its entry is the only one,
-- no writer claims the key ("writer until" 0) and nobody waits ("waited" 0), the key becomes the
-- tombstone
-- "-<last fencing token> <hold token>" instead, as an exclusive release leaves it: it names the
-- released hold as the entry would (a retry answers 2, a late acquisition is refused), for the
-- key's expiry rather than the hold's deadline, and costs the release no second write. A release whose fencing token
-- is unknown that finds no entry of its hold in a shared value adds one, with the deadline
-- TIME + retention and the fencing token 0. At most 8 released holds are kept: past that, the
-- oldest one is dropped (its retried release then answers 0, and its late acquisition is granted
-- until the client's repeated release frees it).
--
-- Reply:   1  released: the hold had the lock until now (the channel was published to). The script
--             does not read the clock: a hold whose deadline had passed unseen answers 1 too, and
--             the client, whose local deadline ends before the server's, reports that loss itself
--          2  released already: the tombstone names this hold, or its released hold's entry is
--             in the shared form (a retried release)
--          0  the hold no longer had the lock (taken by another after its deadline, force-released,
--             or never granted); nothing that another hold has was changed
--
-- The tombstone "-<fencing token> <hold token>" keeps the key's last fencing token and names the
-- released hold, so that an acquisition of that hold reaching the server later (a delayed
-- request on another connection) is refused. It keeps the key's expiry, set at the grant or the
-- last renewal. Flagged allow-oom: a release frees memory, and a server out of memory must not
-- keep a lock that nobody can release.
-- The most released holds a shared value keeps (batch.lua keeps the same bound).
local KEPT_RELEASED = 8
local token = ARGV[1]
local value = redis.call('SET', KEYS[1], '-' .. ARGV[2] .. ' ' .. token, 'KEEPTTL', 'GET')
if value and string.find(value, token, 1, true) == 1 then
    if ARGV[2] == '0' then
        -- The caller did not know the fencing token (a hold's is never 0): the tombstone takes
        -- the hold's. A caller that knows it wrote it already.
        redis.call('SET', KEYS[1], '-' .. string.match(value, '^%x+[ +](%d+)') .. ' ' .. token, 'KEEPTTL')
    end
    if ARGV[4] == 'sharded' then
        redis.call('SPUBLISH', KEYS[2], '')
    elseif string.byte(value, 33) == 43 then
        -- Its waiters subscribed before asking again (see batch.lua).
        redis.call('PUBLISH', KEYS[2], '')
    end
    return 1
end

-- Not this hold's lock. A release whose fencing token is unknown belongs to an acquisition whose
-- answer never came: it may still be on its way, and the tombstone is what refuses it, so such a
-- release names its hold in a tombstone wherever the lock is free. A release that knows its
-- fencing token had its acquisition answered: it leaves what it finds alone.
local unknown = ARGV[2] == '0'
if not value then
    -- Nothing there (never granted, or the key's retention ended): a tombstone of this hold,
    -- which knows no fencing token (what the caller sent may be older than a later grant's that
    -- expired with the key; the next grant takes the clock's).
    redis.call('SET', KEYS[1], '-0 ' .. token, 'PX', ARGV[3])
    return 0
end
if string.byte(value, 1) == 45 then
    local fence, released = string.match(value, '^%-(%d+) (%x+)$')
    if released == token then
        -- A retried release: the first one took effect.
        redis.call('SET', KEYS[1], value, 'KEEPTTL')
        return 2
    end
    if fence and unknown then
        -- Free already: the tombstone now names this hold, keeping the last fencing token.
        redis.call('SET', KEYS[1], '-' .. fence .. ' ' .. token, 'KEEPTTL')
        return 0
    end
elseif unknown then
    local holder, fence, deadline = string.match(value, '^(%x+)[ +](%d+) (%d+)')
    if holder and #holder == 32 then
        local time = redis.call('TIME')
        if tonumber(deadline) <= time[1] * 1000 + math.floor(time[2] / 1000) then
            -- Another hold whose lease has ended: the lock is free, and its tombstone names this
            -- hold, keeping that hold's fencing token.
            redis.call('SET', KEYS[1], '-' .. fence .. ' ' .. token, 'KEEPTTL')
            return 0
        end
    end
end
if string.byte(value, 1) == 42 and #token == 32 then
    -- Shared holders (see acquire_shared.lua): this hold's entry becomes a released hold's,
    -- " <hold token> -<deadline> <fencing token>", moved to the end of the list.
    local head, waited, rest = string.match(value, '^(%*%d+ %d+ %d+ ([01]))(.*)$')
    local from, to
    if head then
        from, to = string.find(rest, ' ' .. token .. ' ', 1, true)
    end
    local released
    if from then
        if string.byte(rest, to + 1) == 45 then
            -- A retried release: the first one took effect.
            redis.call('SET', KEYS[1], value, 'KEEPTTL')
            return 2
        end
        local stop = string.find(rest, ' ', string.find(rest, ' ', to + 1, true) + 1, true)
        local last, writer = string.match(head, '^%*(%d+) %d+ (%d+) ')
        if not stop and from == 1 and writer == '0' and waited == '0' then
            -- This hold's entry is the only one (no other holder, no released hold), no writer
            -- claims the key and nobody was refused: the key becomes the tombstone of this hold
            -- under the last fencing token, as an exclusive release leaves it. It names the hold
            -- as its entry would. (A waiter's mark must outlive the release: the permit waiters
            -- it does not wake wait for the next release's announcement.)
            if ARGV[2] ~= last then
                redis.call('SET', KEYS[1], '-' .. last .. ' ' .. token, 'KEEPTTL')
            end
        else
            released = string.sub(rest, 1, from - 1) .. (stop and string.sub(rest, stop) or '') ..
                ' ' .. token .. ' -' .. string.sub(rest, to + 1, (stop or 0) - 1)
        end
    elseif unknown and head and (string.gsub(rest, ' %x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x %-?%d+ %d+', '')) == '' then
        -- Its acquisition may still be on its way: named, until the retention's end, so that it
        -- is refused when it comes.
        local time = redis.call('TIME')
        released = rest .. ' ' .. token .. ' -' .. (time[1] * 1000 + math.floor(time[2] / 1000) + tonumber(ARGV[3])) .. ' 0'
    end
    if released then
        -- At most 8 released holds: past that, the oldest one is forgotten. Counted with plain
        -- finds (" -" starts a released hold's deadline and nothing else): a pattern scan of a
        -- long list costs several times more.
        local count, at = 0, string.find(released, ' -', 1, true)
        while at and count <= KEPT_RELEASED do
            count = count + 1
            at = string.find(released, ' -', at + 2, true)
        end
        if count > KEPT_RELEASED then
            -- The first " -" is its deadline's: the entry starts at the token before it.
            local at = string.find(released, ' -', 1, true)
            local stop = string.find(released, ' ', string.find(released, ' ', at + 1, true) + 1, true)
            released = string.sub(released, 1, at - 34) .. (stop and string.sub(released, stop) or '')
        end
        if from then
            redis.call('SET', KEYS[1], head .. released, 'KEEPTTL')
        else
            -- A new released entry lives until TIME + retention: the key must live as long.
            redis.call('SET', KEYS[1], head .. released, 'PX',
                math.max(redis.call('PTTL', KEYS[1]), tonumber(ARGV[3])))
            return 0
        end
    end
    if from then
        -- The message says how many shared holds it returned: one.
        if ARGV[4] == 'sharded' then
            redis.call('SPUBLISH', KEYS[2], '1')
        elseif waited == '1' then
            redis.call('PUBLISH', KEYS[2], '1')
        end
        return 1
    end
end
-- Another hold's lock, another hold's tombstone, shared holders without this hold, or a value
-- that is not relock's: put back as it was.
redis.call('SET', KEYS[1], value, 'KEEPTTL')
return 0
