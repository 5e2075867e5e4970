-- Takes a shared hold: a reader of a read-write lock, or one permit of a semaphore.
--
-- KEYS[1]  lock `P:{K}` (see README.md beside this file for its forms)
-- ARGV[1]  hold token (32 lowercase hex digits), new for every hold
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  retention in milliseconds (at least the lease): the key's expiry, never shorter than
--          the longest live lease in the value
-- ARGV[4]  permits: 0 for a reader (readers share without limit), n > 0 for one of n permits
--
-- Reply:   {1, fencing token}  granted; also for a retried request of a live hold (the same grant)
--          {0, ttl ms}         refused: an exclusive hold has the lock (its lease left), a writer
--                              is waiting (readers queue behind it: how long it has claimed the
--                              key for), or all n permits are taken (the soonest lease to end);
--                              PTTL's answer for a value that is not relock's
--          {2, 0}              this hold token was released already (a released hold's entry
--                              or a tombstone names it: see acquire.lua); nothing was written
--          {3, permits}        the key's live holders use another number of permits (0: they
--                              are readers); nothing was written
--          an error            the hold token is not 32 lowercase hex digits, the fencing token
--                              would pass 2^53 - 1, a key of another type, or the server refused
--                              the write
--
-- The shared form is "*<last fencing token> <permits> <writer until ms> <waited>" followed by
-- " <hold token> <deadline ms> <fencing token>" per holder and " <hold token> -<deadline ms>
-- <fencing token>" per released hold (written by release.lua, at most 8). A released hold is
-- not a holder (it takes no permit, and no writer waits for it): it is kept until its deadline
-- so that a retried release answers "released already" and its own acquisition, arriving late,
-- is refused {2, 0}, as a tombstone refuses it. A tombstone met here becomes such an entry, kept
-- for the retention, so that a shared grant does not forget the hold the tombstone names.
-- Holders and released holds past their deadline are dropped when this script writes the value
-- (no sweeper). A reader's fencing token is the key's last one (the last writer's: readers do
-- not advance it), or the clock's when none is known, which is then kept as the last; each
-- permit gets a fresh one, max(last + 1, clock) as for an exclusive hold. "waited" becomes 1
-- once someone was refused: every release is then published.
--
-- The work is one function, which batch.lua carries byte for byte (a test in scripts/mod.rs checks
-- it) and calls with the clock it read once for its whole call: `now` in milliseconds, `clock`
-- in microseconds as text; `lease` and `retention` are numbers, `permits` text. `seen`, when
-- given, is the answer of the first write below that the caller sent itself (batch.lua takes a
-- free key on its own, with the same value and expiry, and passes on what it found there).
local function acquire_shared(lock, token, lease, retention, permits, now, clock, seen)
    if #token ~= 32 or not string.find(token, '^[0-9a-f]+$') then
        -- A value holds hold tokens of exactly this form: any other would corrupt it.
        return redis.error_reply('relock: a hold token is 32 lowercase hex digits, not `' ..
            string.sub(token, 1, 64) .. '`')
    end
    -- A free key is taken with one write, which reads what was there (the grant is the one the
    -- end of this function writes for nothing: the clock's fencing token). A server that refuses
    -- writes refuses this one even when the key is taken: what is there is then read with GET.
    local value = seen or redis.pcall('SET', lock, '*' .. clock .. ' ' .. permits .. ' 0 0 ' .. token ..
        ' ' .. (now + lease) .. ' ' .. clock, 'NX', 'PX', math.max(lease, retention), 'GET')
    if type(value) == 'table' then
        local refused = value
        value = redis.call('GET', lock)
        if not value then
            return refused
        end
    elseif not value then
        return {1, tonumber(clock)}
    end

    -- kept: the entries of the live holders and of the released holds before their deadline, as
    -- text; the value's own list while none has expired (a list is rebuilt only when an entry is
    -- dropped, so that a long list is not copied piece by piece on every request).
    local last, writer, waited, kept, live, longest, soonest = nil, 0, '0', '', 0, 0, nil
    local pruned
    if value then
        local first = string.byte(value, 1)
        if first == 45 then
            local released
            last, released = string.match(value, '^%-(%d+) (%x+)$')
            if released == token then
                return {2, 0}
            end
            if last and #released == 32 and released ~= string.rep('0', 32) then
                -- The hold it names may still have an acquisition on its way: still refused once
                -- the key is shared.
                kept = ' ' .. released .. ' -' .. (now + retention) .. ' ' .. last
            end
        elseif first == 42 then
            local have, until_ms, mark, rest
            last, have, until_ms, mark, rest = string.match(value, '^%*(%d+) (%d+) (%d+) ([01])(.*)$')
            if last then
                writer, waited = tonumber(until_ms), mark
                -- One pass checks the list and reads it: only a list of `<32 hex> <deadline> <fence>`
                -- entries (a released hold's deadline negated) is relock's shared form. The caller's
                -- own entry is found with a plain find (a token is never part of another field).
                local own = string.find(rest, ' ' .. token .. ' ', 1, true)
                local find, start, size, answer = string.find, 1, #rest, nil
                while start <= size do
                    local _, stop, tokens, deadline = find(rest, '^ %x+() (%-?%d+) %d+', start)
                    if not stop or tokens ~= start + 33 then
                        last = nil
                        break
                    end
                    stop = stop + 1
                    local at = tonumber(deadline)
                    if at < 0 then
                        -- A released hold: kept until its deadline, refusing its own acquisition.
                        if start == own then
                            answer = {2, 0}
                        end
                        if -at > now then
                            if pruned then
                                pruned[#pruned + 1] = string.sub(rest, start, stop - 1)
                            end
                        elseif not pruned then
                            pruned = {string.sub(rest, 1, start - 1)}
                        end
                    elseif at > now then
                        if start == own then
                            -- A retried request of a live holder: the same grant.
                            answer = {1, tonumber(string.match(string.sub(rest, start, stop - 1), '(%d+)$'))}
                        end
                        if pruned then
                            pruned[#pruned + 1] = string.sub(rest, start, stop - 1)
                        end
                        local left = at - now
                        live = live + 1
                        if left > longest then
                            longest = left
                        end
                        if not soonest or left < soonest then
                            soonest = left
                        end
                    elseif not pruned then
                        pruned = {string.sub(rest, 1, start - 1)}
                    end
                    start = stop
                end
                if last and answer then
                    return answer
                end
            end
            if last then
                kept = pruned and table.concat(pruned) or rest
                if live > 0 and have ~= permits then
                    return {3, tonumber(have)}
                end
                local refused
                if writer > now then
                    refused = writer - now
                elseif permits ~= '0' and live >= tonumber(permits) then
                    refused = soonest
                end
                if refused then
                    if waited == '0' or pruned then
                        -- Best effort, as acquire.lua marks a hold: the mark makes releases publish.
                        redis.pcall('SET', lock, '*' .. last .. ' ' .. have .. ' ' .. until_ms .. ' 1' .. kept, 'KEEPTTL')
                    end
                    return {0, refused}
                end
            end
        else
            local holder, mark, fence, deadline = string.match(value, '^(%x+)([ +])(%d+) (%d+)')
            if holder and #holder == 32 then
                local left = tonumber(deadline) - now
                if left > 0 then
                    if mark == ' ' then
                        redis.pcall('SET', lock, string.sub(value, 1, 32) .. '+' .. string.sub(value, 34), 'KEEPTTL')
                    end
                    return {0, left}
                end
                last = fence
            end
        end
        if not last then
            -- Not relock's value: never overwritten, held until its key expires.
            return {0, redis.call('PTTL', lock)}
        end
    end

    local fence, text
    -- A reader takes the last writer's token; a key that knows none (nothing, or a tombstone of an
    -- acquisition whose token was never known: 0) gives the clock's.
    if permits == '0' and last and last ~= '0' then
        fence, text = tonumber(last), last
    else
        fence, text = tonumber(clock), clock
        if last then
            if #last > 16 or (#last == 16 and last > '9007199254740990') then
                return redis.error_reply('relock: the fencing token of ' .. lock .. ' is ' .. last ..
                    ', at the limit of exact arithmetic (2^53 - 1); no larger token can be handed out')
            end
            if tonumber(last) >= fence then
                fence = tonumber(last) + 1
                text = string.format('%.0f', fence)
            end
        end
    end
    if lease > longest then
        longest = lease
    end
    if retention > longest then
        longest = retention
    end
    redis.call('SET', lock, '*' .. text .. ' ' .. permits .. ' ' .. writer .. ' ' .. waited .. kept ..
        ' ' .. token .. ' ' .. (now + lease) .. ' ' .. text, 'PX', longest)
    return {1, fence}
end

local time = redis.call('TIME')
return acquire_shared(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4],
    time[1] * 1000 + math.floor(time[2] / 1000), time[1] .. string.rep('0', 6 - #time[2]) .. time[2])
