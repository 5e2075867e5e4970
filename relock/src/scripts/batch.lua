-- Acquires and releases holds: one call carries every request that queued up for the server
-- while the previous calls were in flight (group commit).
--
-- KEYS     the lock `P:{K}` of each request: the releases first, then the acquisitions; its
--          release channel is `P:{K}:released` (both share the hash tag `{K}`)
-- ARGV[1]  holder metadata "<pid> <since ms> <host>", written beside each grant
-- ARGV[2]  lease in milliseconds, for the acquisitions that give none of their own
-- ARGV[3]  retention in milliseconds (at least that lease): the expiry of a grant, and of a
--          tombstone a release writes where nothing was
-- ARGV[4]  how many of the requests are releases, then "+" when a key has more than one request in
--          the call (the client knows, and the script then looks for keys whose shared requests
--          it decides together, below; without it every request is decided alone)
-- then one argument per request, in the order of KEYS:
--   "-<fencing token> <hold token>"           release this hold: the tombstone to write (its
--                                             fencing token 0 when unknown)
--   "<hold token>"                            acquire for this hold (the fast path checks only
--                                             that it has 32 bytes: a full check of its digits
--                                             would cost 4% of an exclusive pair's server time)
--   "<hold token> <lease ms> <retention ms>"  acquire with a lease of its own
--   "<hold token> <lease ms> <retention ms> try"  one attempt that will not wait: a refusal by
--                                             shared holders records no waiting writer
--   "<hold token>*<permits>"                  a shared hold (below) with the call's lease and
--                                             retention
--   "<hold token> <lease ms> <retention ms> shared <permits>"  a shared hold: a reader
--                                             (permits 0) or one of <permits> permits, run as
--                                             acquire_shared.lua runs it (its function, below)
--
-- Reply: two items per request, in the order of KEYS:
--   acquire  1, fencing token   acquired; also for a retried request of a hold that already has
--                               the lock (the same grant again, so a client-side retry is harmless)
--            0, ttl ms          held by another hold (PTTL's answer for a value not relock's)
--            2, 0               refused: this hold was released already (see acquire.lua)
--            3, permits         (a shared hold) refused: the key's live holders use another
--                               number of permits (see acquire_shared.lua)
--   release  1, 0               released: the hold had the lock until now (and the channel was
--                               published to, if the hold had refused someone); see release.lua.
--                               The shared releases of one key in a call are announced by one
--                               message, their count ("1" from a release run alone; empty for
--                               an exclusive hold's)
--            2, 0               released already: the tombstone, or a released hold's entry in the
--                               shared form, names this hold (a retry)
--            0, 0               the hold no longer had the lock; nothing another hold has changed
--   either  -1, "<command> <error>"   this request failed (a key of another type, an ACL
--                               refusal, out of memory, the fencing token's limit): the command
--                               that failed and its error; the other requests ran as if it had
--                               not been there
--
-- Each request runs as acquire.lua or release.lua would run it alone (see those for the forms of
-- the key and why), with two differences: the server's time is read once per call, and on a
-- server out of memory (this script has no `allow-oom` flag: a write that may grow memory is
-- refused until the call has written something) a release frees an exclusive hold with DEL, no
-- tombstone, and rewrites a shared value after a DEL of it, naming no hold it did not find.
-- The requests of one call were all in flight at once, so any order is one they could have run
-- in; releases run first, so that a lock released and asked for in the same call is granted. A
-- locker has one exclusive request in flight per key, so the exclusive grants of one call are of
-- distinct keys and one clock reading numbers them all; shared requests (many readers or permits
-- of one key may share a call) run acquire_shared.lua's own function, which numbers permits from
-- the key's last fencing token (max(last + 1, clock)), so several of one key in one call differ.
-- The shared requests of a key that has several requests in the call (releases of its shared
-- holders, shared acquisitions) are decided on the key's value read once, each on what the ones
-- before it left, and the result is written once (see "Shared keys with several requests"
-- below); an exclusive request of such a key first writes what they left.
--
-- Written for the server's CPU: the common cases (a free key, the release of a live hold) are
-- one SET each, no string is built that a request does not need, and the grant's text after the
-- hold token is built once per call for the shared lease.
-- `try` returns an error as a table instead of raising it.
local call, try, find, byte, sub, match, type = redis.call, redis.pcall, string.find, string.byte,
    string.sub, string.match, type
local holder, releases, repeated = ARGV[1], tonumber(ARGV[4]), false
if not releases and byte(ARGV[4], -1) == 43 then
    releases, repeated = tonumber(sub(ARGV[4], 1, -2)), true
end
-- The server's clock, read at the first request that needs it: milliseconds, and microseconds as
-- a number and as text (formatting a 16-digit number with string.format costs more than a call).
local now, micros, clock

-- "+": the byte after the hold token of a lock that has refused someone. "-": a tombstone.
-- "*": shared holders (readers, permits).
local WAITED, TOMBSTONE, SHARED = 43, 45, 42
-- The most released holds a shared value keeps (release.lua keeps the same bound).
local KEPT_RELEASED = 8

-- The command being called, to name it if it fails.
local calling

-- Two items per request, and how many are written.
local reply, n = {}, 0

local function tick()
    calling = 'TIME'
    local time = call('TIME')
    now = time[1] * 1000 + math.floor(time[2] / 1000)
    clock = time[1] .. string.rep('0', 6 - #time[2]) .. time[2]
    micros = tonumber(clock)
end

-- Shared keys with several requests in this call (64 readers of one key, a burst of permits):
-- each such key's value is read and parsed once, every request of it is decided on that parsed
-- form exactly as acquire_shared's function and release would decide it on the value the
-- requests before it left, and the result is written once, at the end of the call. Deciding
-- request by request would cost each request a pass over the whole list (every Lua string the
-- server builds costs a pass over its bytes): 24 times an exclusive pair for 64 readers of a key.
--
-- All of it is made only in a call the client marked as having a key more than once ("+"): a call
-- makes every function it defines, and a function costs the call that makes it (its upvalues)
-- even when it never runs. `G`: its functions and `groups` (a key's parsed form, or false once the
-- key runs request by request for the rest of the call), written at the end in the order met
-- (`grouped`). counts: the requests of each key in this call, counted when a shared value or
-- request is first met. Deadlines are compared as text with `nowtext`, the clock's milliseconds,
-- which needs 13 digits everywhere: until the year 2286 (a call whose retention would give
-- another length, or a lease, runs request by request).
local G

if repeated then
    local counts, nowtext
    local groups, grouped, formed = {}, {}, {}

    local function several(lock)
        if not counts then
            counts = {}
            if not now then
                tick()
            end
            nowtext = tostring(now)
            if #nowtext == 13 and tonumber(ARGV[3]) > 0 and #tostring(now + tonumber(ARGV[3])) == 13 then
                for k = 1, #KEYS do
                    local key = KEYS[k]
                    counts[key] = (counts[key] or 0) + 1
                end
            end
        end
        return groups[lock] == nil and (counts[lock] or 0) > 1
    end

    -- A parsed key: `kind` '*' (shared holders) or '-' (a tombstone: `last`, `named` the hold it
    -- names). For '*': the header's fields as text (`writer` also as a number, `fence` the last
    -- fencing token as one), and the entries. An entry is a number: the value's own entries are 1 to
    -- `own`, read in place in `value` (`from`: the space before the token; an entry ends where the
    -- next begins), so that the ones no request changes are written back as they were, a run of them
    -- as one piece; entries added since (grants, released holds named by a release) have their text
    -- after the token and its sign in `tail`. Per entry: `token`, `deadline` as text (unsigned),
    -- `released` (a released hold's), its slot in `list` (`slot`). `list` holds the entries in order
    -- in `size` slots, false where an entry was dropped or moved to the end. `index`: hold token →
    -- entry. Counts kept as the requests go: `count` entries, `live` holders before their deadline,
    -- `held` released entries, `expired` entries past their deadline (dropped at the next write of a
    -- grant or a refusal, as the function drops them). `longest`: the most lease any holder has left
    -- (nil: to be counted). `px`: the expiry the last grant or new released entry set (nil: the key
    -- keeps its own). `dirty`: the key must be written at the end; `announce`: how many returned
    -- shared holds the one message published at the end announces (nil: none). Grants come after every other entry (a call's first `releases` requests are its
    -- releases, so no release follows a grant): `grants` of them, in
    -- `grant_token`, `grant_deadline`, `grant_tail`, and `granted`: hold token → grant. Every table
    -- here is filled from 1 without gaps (a table with gaps costs the server a rehash of its hash
    -- part as it grows).
    local function new_group(lock, state)
        groups[lock] = state
        grouped[#grouped + 1] = lock
        formed[lock] = n + 1
        return state
    end

    local function shared_state(last, have, writer, writer_text, waited)
        return {kind = '*', last = last, fence = tonumber(last), have = have, writer = writer, writer_text = writer_text,
            waited = waited, own = 0, entries = 0, list = {}, size = 0, index = {}, token = {}, deadline = {},
            released = {}, from = {}, tail = {}, slot = {}, count = 0, live = 0, held = 0, expired = 0, oldest = 1,
            grants = 0, granted = {}, grant_token = {}, grant_deadline = {}, grant_tail = {}}
    end

    local function add(state, token, deadline, released, tail)
        local entry, slot = state.entries + 1, state.size + 1
        state.entries, state.size, state.count = entry, slot, state.count + 1
        state.list[slot], state.slot[entry], state.index[token] = entry, slot, entry
        state.token[entry], state.deadline[entry], state.released[entry], state.tail[entry] = token, deadline, released, tail
        return entry
    end

    -- The shared form `value` parsed, or nil when it is not relock's, or holds what this form does not
    -- mirror (a deadline of another length, a token listed twice, a writer's claim with a leading
    -- zero). Each entry is read with plain finds (a pattern costs the server several times more per
    -- byte) and checked for its shape, not for every digit: relock's scripts alone write it.
    local function parse(value)
        local last, have, writer, waited, at = match(value, '^%*(%d+) (%d+) (%d+) ([01])()')
        if not last or tostring(tonumber(writer)) ~= writer then
            return nil
        end
        local state = shared_state(last, have, tonumber(writer), writer, waited)
        local index, tokens, deadlines, released, from, list, slots = state.index, state.token, state.deadline,
            state.released, state.from, state.list, state.slot
        local size, n, live, held, expired = #value, 0, 0, 0, 0
        while at <= size do
            local token = sub(value, at + 1, at + 32)
            local space = find(value, ' ', at + 34, true)
            if not space or index[token] then
                return nil
            end
            local deadline = sub(value, space - 13, space - 1)
            local gone = space - at == 48
            if gone then
                if byte(value, at + 34) ~= 45 then
                    return nil
                end
                held = held + 1
            elseif space - at ~= 47 then
                return nil
            elseif deadline > nowtext then
                live = live + 1
            end
            if deadline <= nowtext then
                expired = expired + 1
            end
            n = n + 1
            index[token], tokens[n], deadlines[n], released[n], from[n], list[n], slots[n] = n, token, deadline, gone, at, n, n
            at = find(value, ' ', space + 1, true) or size + 1
            if at == space + 1 then
                return nil
            end
        end
        state.value, state.own, state.entries, state.size, state.count = value, n, n, n, n
        state.live, state.held, state.expired = live, held, expired
        return state
    end

    -- The text after an own entry's token and sign: its deadline and fence. (Only a holder's entry is
    -- asked for: a holder's, or a released hold's moved to the end, which had no sign in the value.)
    local function own_tail(state, entry)
        local stop = #state.value
        if entry < state.own then
            stop = state.from[entry + 1] - 1
        end
        return sub(state.value, state.from[entry] + 34, stop)
    end

    local function drop(state, entry)
        state.list[state.slot[entry]] = false
        state.index[state.token[entry]] = nil
        state.count = state.count - 1
        if state.released[entry] then
            state.held = state.held - 1
        end
        if state.deadline[entry] <= nowtext then
            state.expired = state.expired - 1
        end
    end

    -- Drops the entries past their deadline, as the function does when it writes.
    local function prune(state)
        local list, deadlines = state.list, state.deadline
        for slot = 1, state.size do
            local entry = list[slot]
            if entry and deadlines[entry] <= nowtext then
                drop(state, entry)
            end
        end
    end

    -- At most 8 released holds: past that, the oldest (first listed) is dropped, as release_shared
    -- drops it. Slots before `oldest` are empty or holders' (a holder released later moves to the end).
    local function bound(state)
        local list, released, slot = state.list, state.released, state.oldest
        local entry = list[slot]
        while not entry or not released[entry] do
            slot = slot + 1
            entry = list[slot]
        end
        drop(state, entry)
        state.oldest = slot + 1
    end

    -- The most (or, `least`, the least) lease a holder has left, in milliseconds; nil for none.
    local function lease_left(state, least)
        local list, deadlines, released, found = state.list, state.deadline, state.released, nil
        for slot = 1, state.size do
            local entry = list[slot]
            if entry and not released[entry] then
                local deadline = deadlines[entry]
                if deadline > nowtext and (not found or (least and deadline < found) or (not least and deadline > found)) then
                    found = deadline
                end
            end
        end
        deadlines = state.grant_deadline
        for grant = 1, state.grants do
            local deadline = deadlines[grant]
            if not found or (least and deadline < found) or (not least and deadline > found) then
                found = deadline
            end
        end
        return found and tonumber(found) - now
    end

    -- Numbers and deadline texts (now + it) of this call's lease and retention texts.
    local numbers, ends = {}, {}

    local function number(text)
        local value = numbers[text]
        if not value then
            value = tonumber(text)
            numbers[text] = value
            ends[text] = tostring(now + value)
        end
        return value
    end

    -- A release of a key in a group, as release() decides it for a shared value or a tombstone.
    local function group_release(lock, state, token, unknown)
        if state.kind == '-' then
            if state.named == token then
                return 2, 0
            end
            if unknown then
                state.named = token
                state.dirty = true
            end
            return 0, 0
        end
        local entry = state.index[token]
        if entry then
            if state.released[entry] then
                return 2, 0
            end
            state.dirty, state.longest = true, nil
            if state.waited == '1' then
                state.announce = (state.announce or 0) + 1
            end
            if state.count == 1 and state.writer_text == '0' and state.waited ~= '1' then
                -- The only entry, no writer's claim, nobody waits: the key becomes this hold's
                -- tombstone under the last fencing token.
                state.kind, state.named = '-', token
                return 1, 0
            end
            -- Moved to the end as a released hold's entry (past its deadline or not, as it was).
            if state.deadline[entry] > nowtext then
                state.live = state.live - 1
            end
            local slot, list, slots = state.size + 1, state.list, state.slot
            list[slots[entry]], list[slot] = false, entry
            state.size, slots[entry], state.released[entry] = slot, slot, true
            local held = state.held + 1
            if held > KEPT_RELEASED then
                -- bound(), the common case: the oldest released hold is at `oldest`.
                local oldest = list[state.oldest]
                if oldest and state.released[oldest] then
                    list[state.oldest], state.index[state.token[oldest]] = false, nil
                    state.oldest, state.count, held = state.oldest + 1, state.count - 1, held - 1
                    if state.deadline[oldest] <= nowtext then
                        state.expired = state.expired - 1
                    end
                else
                    state.held = held
                    bound(state)
                    return 1, 0
                end
            end
            state.held = held
            return 1, 0
        end
        if unknown then
            local retention = number(ARGV[3])
            local deadline = ends[ARGV[3]]
            add(state, token, deadline, true, deadline .. ' 0')
            state.held = state.held + 1
            if state.held > KEPT_RELEASED then
                bound(state)
            end
            local ttl = state.px
            if not ttl then
                calling = 'PTTL'
                ttl = call('PTTL', lock)
            end
            if retention > ttl then
                ttl = retention
            end
            state.px, state.dirty = ttl, true
        end
        return 0, 0
    end

    -- A shared acquisition of a key in a group, as acquire_shared's function decides it; nil when it
    -- is not for the group (the caller writes the group and runs the function).
    local function group_acquire(lock, state, token, lease, retention, permits)
        if #token ~= 32 or not find(token, '^[0-9a-f]+$') then
            -- acquire_shared's error, which it answers before it reads anything.
            error({err = 'relock: a hold token is 32 lowercase hex digits, not `' .. sub(token, 1, 64) .. '`'})
        end
        local lease_ms, retention_ms = numbers[lease], numbers[retention]
        if not lease_ms or not retention_ms then
            lease_ms, retention_ms = number(lease), number(retention)
        end
        local deadline = ends[lease]
        if lease_ms <= 0 or #deadline ~= 13 or #ends[retention] ~= 13 then
            -- A lease of 0 is over at once, which the group does not keep track of.
            return nil
        end
        if state.kind == '-' then
            local named = state.named
            if named == token then
                return 2, 0
            end
            local last = state.last
            if (permits ~= '0' or last == '0') and (#last > 16 or (#last == 16 and last > '9007199254740990')) then
                -- The error below, before the tombstone is replaced (a failed grant writes nothing).
                error({err = 'relock: the fencing token of ' .. lock .. ' is ' .. last ..
                    ', at the limit of exact arithmetic (2^53 - 1); no larger token can be handed out'})
            end
            local last, announce = state.last, state.announce
            state = shared_state(last, permits, 0, '0', '0')
            state.announce, state.longest = announce, 0
            groups[lock] = state
            if #named == 32 and named ~= string.rep('0', 32) then
                -- The hold it names may still have an acquisition on its way.
                add(state, named, ends[retention], true, ends[retention] .. ' ' .. last)
                state.held = 1
            end
        else
            local grant = state.granted[token]
            if grant then
                -- A request repeated in this call: the same grant.
                return 1, tonumber(match(state.grant_tail[grant], '(%d+)$'))
            end
            local entry = state.index[token]
            if entry then
                if state.released[entry] then
                    return 2, 0
                end
                if state.deadline[entry] > nowtext then
                    -- A retried request of a live holder: the same grant.
                    return 1, tonumber(match(state.tail[entry] or own_tail(state, entry), '(%d+)$'))
                end
            end
            local live = state.live
            if live > 0 and state.have ~= permits then
                return 3, tonumber(state.have)
            end
            local refused
            if state.writer > now then
                refused = state.writer - now
            elseif permits ~= '0' and live >= tonumber(permits) then
                refused = lease_left(state, true)
            end
            if refused then
                if state.waited == '0' or state.expired > 0 then
                    prune(state)
                    state.waited, state.dirty = '1', true
                end
                return 0, refused
            end
            -- An entry of this hold past its deadline is dropped here with the others.
            if state.expired > 0 then
                prune(state)
            end
        end
        local fence, text
        local last = state.last
        if permits == '0' and last ~= '0' then
            fence, text = state.fence, last
        else
            fence, text = micros, clock
            if #last > 16 or (#last == 16 and last > '9007199254740990') then
                error({err = 'relock: the fencing token of ' .. lock .. ' is ' .. last ..
                    ', at the limit of exact arithmetic (2^53 - 1); no larger token can be handed out'})
            end
            if state.fence >= fence then
                fence = state.fence + 1
                text = string.format('%.0f', fence)
            end
            state.last, state.fence = text, fence
        end
        local longest = state.longest
        if not longest then
            longest = lease_left(state) or 0
        end
        local px = retention_ms
        if lease_ms > px then
            px = lease_ms
        end
        if longest > px then
            px = longest
        end
        if lease_ms > longest then
            longest = lease_ms
        end
        state.px, state.longest = px, longest
        -- Readers of one call share their text after the token: the deadline and the last token.
        local tails = state.tails
        if not tails or state.tails_of ~= text then
            tails = {}
            state.tails, state.tails_of = tails, text
        end
        local tail = tails[lease]
        if not tail then
            tail = deadline .. ' ' .. text
            tails[lease] = tail
        end
        local grant = state.grants + 1
        state.grants, state.count, state.live, state.have, state.dirty = grant, state.count + 1, state.live + 1, permits, true
        state.granted[token], state.grant_token[grant], state.grant_deadline[grant], state.grant_tail[grant] =
            grant, token, deadline, tail
        return 1, fence
    end

    -- Writes a group's key as its requests left it, and publishes a release that must be.
    local function flush(lock, state)
        if state.dirty then
            local value
            if state.kind == '-' then
                value = '-' .. state.last .. ' ' .. state.named
            else
                local out, n = {'*', state.last, ' ', state.have, ' ', state.writer_text, ' ', state.waited}, 8
                local list, own, original, tokens, released, tails, from = state.list, state.own, state.value,
                    state.token, state.released, state.tail, state.from
                local slot, size = 1, state.size
                while slot <= size do
                    local entry = list[slot]
                    if entry == slot and slot <= own then
                        -- A run of the value's own entries, unchanged: one piece.
                        local stop = slot
                        while stop < own and list[stop + 1] == stop + 1 do
                            stop = stop + 1
                        end
                        n = n + 1
                        if stop < own then
                            out[n] = sub(original, from[slot], from[stop + 1] - 1)
                        else
                            out[n] = sub(original, from[slot])
                        end
                        slot = stop
                    elseif entry then
                        out[n + 1] = ' '
                        out[n + 2] = tokens[entry]
                        if released[entry] then
                            out[n + 3] = ' -'
                        else
                            out[n + 3] = ' '
                        end
                        out[n + 4] = tails[entry] or own_tail(state, entry)
                        n = n + 4
                    end
                    slot = slot + 1
                end
                local grant_tokens, grant_tails = state.grant_token, state.grant_tail
                for grant = 1, state.grants do
                    out[n + 1] = ' '
                    out[n + 2] = grant_tokens[grant]
                    out[n + 3] = ' '
                    out[n + 4] = grant_tails[grant]
                    n = n + 4
                end
                value = table.concat(out)
            end
            if state.px then
                call('SET', lock, value, 'PX', state.px)
            else
                call('SET', lock, value, 'KEEPTTL')
            end
        end
    end

    -- Writes a group's key, for a request that runs alone (an exclusive acquisition): the key runs
    -- request by request for the rest of the call.
    -- A refused write or announcement of a group's key at the end fails its requests as it would
    -- have failed each of them alone: every request of the key decided in the group (from the
    -- reply `formed` at, when the group was made), or the releases among them that were to be
    -- announced (all that released: a call's releases come before its acquisitions, so the key's
    -- `waited` mark was the same for each).

    local function fail(lock, command, err, announced)
        local text = command .. ' ' .. (type(err) == 'table' and err.err or tostring(err))
        for k = (formed[lock] + 1) / 2, n / 2 do
            if KEYS[k] == lock and (not announced or (k <= releases and reply[2 * k - 1] == 1)) then
                reply[2 * k - 1], reply[2 * k] = -1, text
            end
        end
    end

    -- Writes a group's key and announces its releases; what fails is its requests' failure, and
    -- every other key of the call is still written.
    local function finish(lock, state)
        local ok, err = pcall(flush, lock, state)
        if not ok then
            fail(lock, 'SET', err)
        elseif state.announce then
            ok, err = pcall(call, 'PUBLISH', lock .. ':released', tostring(state.announce))
            if not ok then
                fail(lock, 'PUBLISH', err, true)
            end
        end
    end

    -- Writes a group's key, for a request that runs alone (an exclusive acquisition): the key runs
    -- request by request for the rest of the call.
    local function ungroup(lock)
        local state = groups[lock]
        if state then
            groups[lock] = false
            finish(lock, state)
        end
    end


    G = {several = several, groups = groups, grouped = grouped, parse = parse, new_group = new_group,
        shared_state = shared_state, release = group_release, acquire = group_acquire, flush = flush,
        ungroup = ungroup, number = number, ends = ends, finish = finish}
end

-- The text after the hold token of a grant with the clock's token, per lease.
local tails = {}

local function acquire(lock, token, lease, retention, once)
    if not now then
        tick()
    end
    if G and G.groups[lock] then
        G.ungroup(lock)
    end
    local tail = tails[lease]
    if not tail then
        tail = ' ' .. clock .. ' ' .. (now + tonumber(lease)) .. ' ' .. holder
        tails[lease] = tail
    end
    -- Takes a free key, or reads what is there. A server that refuses writes (out of memory, too
    -- few replicas) refuses this one even when the key is taken: a refusal and a retried grant are
    -- then read with GET, as they need no write.
    calling = 'SET'
    local value = try('SET', lock, token .. tail, 'NX', 'PX', retention, 'GET')
    if type(value) == 'table' then
        calling = 'GET'
        local refused = value
        value = call('GET', lock)
        if not value then
            calling = 'SET'
            error(refused)
        end
    end
    if not value then
        return 1, micros
    end
    local last, sep
    if byte(value, 1) == TOMBSTONE then
        local released
        last, released = match(value, '^%-(%d+) (%x+)$')
        if released == token then
            return 2, 0
        end
    else
        local owner, mark, fence, deadline = match(value, '^(%x+)([ +])(%d+) (%d+)')
        if owner and #owner == 32 then
            if owner == token then
                return 1, tonumber(fence)
            end
            local left = tonumber(deadline) - now
            if left > 0 then
                if mark == ' ' then
                    -- Best effort: a refusal must not fail because this write is refused.
                    try('SET', lock, sub(value, 1, 32) .. '+' .. sub(value, 34), 'KEEPTTL')
                end
                return 0, left
            end
            last = fence
        elseif byte(value, 1) == SHARED then
            -- Shared holders: see acquire.lua.
            local have, writer, waited, rest
            last, have, writer, waited, rest = match(value, '^%*(%d+) (%d+) (%d+) ([01])(.*)$')
            -- Only a list of `<32 hex> <deadline> <fence>` entries (a released hold's deadline
            -- negated) is relock's shared form.
            if last and (string.gsub(rest, ' %x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x %-?%d+ %d+', '')) ~= '' then
                last = nil
            end
            if last and find(rest, ' ' .. token .. ' -', 1, true) then
                -- This hold was released already (its released entry names it).
                return 2, 0
            end
            if last then
                local longest = 0
                for deadline in string.gmatch(rest, ' %x+ (%-?%d+) %d+') do
                    if tonumber(deadline) - now > longest then
                        longest = tonumber(deadline) - now
                    end
                end
                if longest > 0 then
                    if not once then
                        writer = math.max(tonumber(writer), now + longest + 1000)
                        try('SET', lock, '*' .. last .. ' ' .. have .. ' ' .. string.format('%.0f', writer) .. ' 1' .. rest, 'KEEPTTL')
                    end
                    return 0, longest
                end
                if waited == '1' then
                    sep = '+'
                end
            end
        end
    end
    if not last then
        calling = 'PTTL'
        return 0, call('PTTL', lock)
    end
    if #last > 16 or (#last == 16 and last > '9007199254740990') then
        calling = 'SET'
        error({err = 'the fencing token is ' .. last ..
            ', at the limit of exact arithmetic (2^53 - 1); no larger token can be handed out'})
    end
    local fence, text = micros, clock
    if tonumber(last) >= fence then
        fence = tonumber(last) + 1
        text = string.format('%.0f', fence)
    end
    calling = 'SET'
    call('SET', lock, token .. (sep or ' ') .. text .. sub(tail, #clock + 2), 'PX', retention)
    return 1, fence
end


-- A shared hold's release (see release.lua): its entry " <hold token> <deadline> <fence>" becomes
-- a released hold's, " <hold token> -<deadline> <fence>", at the end of the list; with its fencing
-- token unknown and no entry, the hold is named in a released one until the retention's end.
-- `value` is the key's shared value, already overwritten by the caller's tombstone, or (`full`:
-- the server is out of memory) not written at all. Answers 1, 2 (the entry is a released hold's:
-- a retry), or nothing when the value is left to the caller to put back.
local function release_shared(lock, value, token, unknown, full)
    -- The list starts after the "waited" mark; the value is copied as few times as it can be (a
    -- script's every new string costs the server a pass over its bytes).
    local mark, waited = match(value, '^%*%d+ %d+ %d+ ()([01])')
    local from, to
    if mark and #token == 32 then
        from, to = find(value, ' ' .. token .. ' ', mark + 1, true)
    end
    local released
    if from then
        if byte(value, to + 1) == TOMBSTONE then
            -- A retried release: the first one took effect.
            if not full then
                calling = 'SET'
                call('SET', lock, value, 'KEEPTTL')
            end
            return 2
        end
        local stop = find(value, ' ', find(value, ' ', to + 1, true) + 1, true)
        released = sub(value, 1, from - 1) .. (stop and sub(value, stop) or '') .. ' ' .. token ..
            ' -' .. sub(value, to + 1, (stop or 0) - 1)
    elseif unknown and mark and not full and (string.gsub(sub(value, mark + 1), ' %x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x %-?%d+ %d+', '')) == '' then
        if not now then
            tick()
        end
        released = value .. ' ' .. token .. ' -' .. (now + tonumber(ARGV[3])) .. ' 0'
    end
    if not released then
        return nil
    end
    -- At most 8 released holds: past that, the oldest one is forgotten. Counted with plain finds
    -- (" -" starts a released hold's deadline and nothing else, the first fields included).
    local count, at = 0, find(released, ' -', 1, true)
    while at and count <= KEPT_RELEASED do
        count = count + 1
        at = find(released, ' -', at + 2, true)
    end
    if count > KEPT_RELEASED then
        -- The first " -" is its deadline's: the entry starts at the token before it.
        local at = find(released, ' -', 1, true)
        local stop = find(released, ' ', find(released, ' ', at + 1, true) + 1, true)
        released = sub(released, 1, at - 34) .. (stop and sub(released, stop) or '')
    end
    if full then
        -- The server refuses a write that may grow memory until the script has written: DEL (which
        -- frees memory and is never refused) first, then the value again with the key's expiry.
        calling = 'PTTL'
        local ttl = call('PTTL', lock)
        calling = 'DEL'
        call('DEL', lock)
        calling = 'SET'
        if ttl > 0 then
            call('SET', lock, released, 'PX', ttl)
        else
            call('SET', lock, released)
        end
    elseif from then
        calling = 'SET'
        call('SET', lock, released, 'KEEPTTL')
    else
        -- A new released entry lives until TIME + retention: the key must live as long.
        calling = 'PTTL'
        local ttl = math.max(call('PTTL', lock), tonumber(ARGV[3]))
        calling = 'SET'
        call('SET', lock, released, 'PX', ttl)
    end
    if not from then
        return 0
    end
    if waited == '1' then
        calling = 'PUBLISH'
        call('PUBLISH', lock .. ':released', '1')
    end
    return 1
end

local function release(lock, tombstone)
    local token = sub(tombstone, -32)
    -- "-0 ": the caller does not know the fencing token: its acquisition's answer never came.
    local unknown = byte(tombstone, 2) == 48 and byte(tombstone, 3) == 32
    calling = 'SET'
    local value = try('SET', lock, tombstone, 'KEEPTTL', 'GET')
    if type(value) == 'table' then
        -- Out of memory: a release must still free the lock, without its tombstone.
        calling = 'GET'
        value = call('GET', lock)
        if value and byte(value, 1) == TOMBSTONE and sub(value, -32) == token then
            return 2, 0
        end
        if value and byte(value, 1) == SHARED then
            return release_shared(lock, value, token, unknown, true) or 0, 0
        end
        if not value or find(value, token, 1, true) ~= 1 then
            return 0, 0
        end
        calling = 'DEL'
        call('DEL', lock)
    elseif not value then
        -- Nothing there (never granted, or the key's retention ended): a tombstone of this hold,
        -- which refuses an acquisition still on its way.
        calling = 'SET'
        call('SET', lock, '-0 ' .. token, 'PX', ARGV[3])
        return 0, 0
    elseif find(value, token, 1, true) ~= 1 then
        -- Not this hold's lock: as release.lua, a release whose fencing token is unknown names
        -- its hold in a tombstone wherever the lock is free; one that knows it leaves what it
        -- finds alone.
        calling = 'SET'
        if byte(value, 1) == TOMBSTONE then
            local fence, released = match(value, '^%-(%d+) (%x+)$')
            if released == token then
                -- A retried release: the first one took effect.
                call('SET', lock, value, 'KEEPTTL')
                return 2, 0
            end
            if fence and unknown then
                call('SET', lock, '-' .. fence .. ' ' .. token, 'KEEPTTL')
                return 0, 0
            end
        elseif unknown then
            local owner, fence, deadline = match(value, '^(%x+)[ +](%d+) (%d+)')
            if owner and #owner == 32 then
                if not now then
                    tick()
                end
                if tonumber(deadline) <= now then
                    calling = 'SET'
                    call('SET', lock, '-' .. fence .. ' ' .. token, 'KEEPTTL')
                    return 0, 0
                end
            end
        end
        if byte(value, 1) == SHARED then
            if G and G.several(lock) then
                local state = G.parse(value)
                if state then
                    -- The key holds this release's tombstone until the group is written.
                    state.dirty = true
                    G.new_group(lock, state)
                    return G.release(lock, state, token, unknown)
                end
                G.groups[lock] = false
            end
            -- This hold's live entry is the only one, no writer claims the key and nobody waits:
            -- the key is left as this hold's tombstone under the last fencing token, as
            -- release.lua leaves it (nothing to announce). Checked with matches that create no
            -- string (each would cost a pass over it).
            local from = find(value, token, 1, true)
            if from and match(value, '^%*%d+ %d+ 0 0 ()') == from and find(value, '^ %d+ %d+$', from + 32) then
                local fence = sub(tombstone, 2, #tombstone - 33)
                if sub(value, 2, #fence + 1) ~= fence or byte(value, #fence + 2) ~= 32 then
                    call('SET', lock, '-' .. match(value, '^%*(%d+)') .. ' ' .. token, 'KEEPTTL')
                end
                return 1, 0
            end
            local status = release_shared(lock, value, token, unknown)
            if status then
                return status, 0
            end
        end
        -- Another hold's lock, another hold's tombstone, shared holders without this hold, or a
        -- value that is not relock's: put back as it was.
        calling = 'SET'
        call('SET', lock, value, 'KEEPTTL')
        return 0, 0
    elseif unknown then
        -- The caller did not know the fencing token (a hold's is never 0): the tombstone takes
        -- the hold's. A caller that knows it wrote it already.
        calling = 'SET'
        call('SET', lock, '-' .. match(value, '^%x+[ +](%d+)') .. ' ' .. token, 'KEEPTTL')
    end
    if byte(value, 33) == WAITED then
        calling = 'PUBLISH'
        call('PUBLISH', lock .. ':released', '')
    end
    return 1, 0
end

-- acquire_shared.lua's function, byte for byte (a test in scripts/mod.rs checks it).
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

-- The text after the hold token of a shared grant of a free key, per lease: its deadline and the
-- clock's fencing token.
local shared_tails = {}

-- A shared request's status and value, with this call's clock; its error reply raised, as a
-- failed command's error is. A free key is taken here as acquire_shared's function takes it (the
-- same checked token, value and expiry; no number formatted twice in one call); anything else is
-- the function's, with what this write found.
local function shared(lock, token, lease, retention, permits)
    if not now then
        tick()
        -- A failure below is named after the grant's SET, as the caller named it.
        calling = 'SET'
    end
    if G and G.groups[lock] then
        local status, value = G.acquire(lock, G.groups[lock], token, lease, retention, permits)
        if status then
            return status, value
        end
        -- A deadline the group cannot hold: this key runs request by request from here.
        G.ungroup(lock)
    end
    local seen
    -- The expiry is the longer of lease and retention: compared as text only when both are
    -- plain numbers (no leading zero), else left to the function.
    if #token == 32 and find(token, '^[0-9a-f]+$') and byte(lease, 1) ~= 48 and byte(retention, 1) ~= 48 then
        local expiry = retention
        if #lease > #retention or (#lease == #retention and lease > retention) then
            expiry = lease
        end
        local tail = shared_tails[lease]
        if not tail then
            tail = ' ' .. (now + tonumber(lease)) .. ' ' .. clock
            shared_tails[lease] = tail
        end
        seen = try('SET', lock, '*' .. clock .. ' ' .. permits .. ' 0 0 ' .. token .. tail, 'NX', 'PX', expiry, 'GET')
        if not seen then
            if G and G.several(lock) then
                local lease_ms, ends = G.number(lease), G.ends
                if #ends[lease] == 13 then
                    -- The value just written, parsed: its one holder.
                    local state = G.new_group(lock, G.shared_state(clock, permits, 0, '0', '0'))
                    state.live, state.count, state.longest, state.grants = 1, 1, lease_ms, 1
                    state.granted[token], state.grant_token[1], state.grant_deadline[1], state.grant_tail[1] =
                        1, token, ends[lease], sub(tail, 2)
                else
                    G.groups[lock] = false
                end
            end
            return 1, micros
        end
        if type(seen) == 'string' and G and G.several(lock) then
            local state
            if byte(seen, 1) == SHARED then
                state = G.parse(seen)
            elseif byte(seen, 1) == TOMBSTONE then
                local last, named = match(seen, '^%-(%d+) (%x+)$')
                if last then
                    state = {kind = '-', last = last, named = named}
                end
            end
            if state then
                local status, value = G.acquire(lock, G.new_group(lock, state), token, lease, retention, permits)
                if status then
                    return status, value
                end
            end
            -- A hold, a value not relock's, a deadline the group cannot hold: request by request.
            G.ungroup(lock)
            G.groups[lock] = false
        end
    end
    local answer = acquire_shared(lock, token, tonumber(lease), tonumber(retention), permits, now, clock, seen)
    if answer.err then
        error(answer)
    end
    return answer[1], answer[2]
end

local lease, retention = ARGV[2], ARGV[3]
for k = 1, #KEYS do
    local ok, status, value
    local request = ARGV[k + 4]
    calling = 'the script'
    if k <= releases then
        if G and G.groups[KEYS[k]] then
            -- As release() reads its request.
            ok, status, value = pcall(G.release, KEYS[k], G.groups[KEYS[k]], sub(request, -32),
                byte(request, 2) == 48 and byte(request, 3) == 32)
        else
            ok, status, value = pcall(release, KEYS[k], request)
        end
    elseif #request == 32 then
        ok, status, value = pcall(acquire, KEYS[k], request, lease, retention)
    elseif byte(request, 33) == SHARED then
        -- "<hold token>*<permits>": a shared request with the call's lease and retention.
        local permits = sub(request, 34)
        if permits ~= '0' and (permits == '' or find(permits, '%D')) then
            ok, status = false, {err = 'a shared request is "<hold token>*<permits>"'}
        else
            -- Named as below.
            calling = 'SET'
            ok, status, value = pcall(shared, KEYS[k], sub(request, 1, 32), lease, retention, permits)
        end
    else
        local token, own_lease, own_retention, flag, permits = match(request, '^(%x+) (%d+) (%d+) ?(%a*) ?(%d*)$')
        if token and flag == 'shared' and permits ~= '' then
            -- Named after the grant's SET, the one command there that a server refuses (out of
            -- memory, an ACL); a key of another type is told by its WRONGTYPE. The hold token is
            -- checked there, as acquire_shared.lua alone checks it.
            calling = 'SET'
            ok, status, value = pcall(shared, KEYS[k], token, own_lease, own_retention, permits)
        elseif not token or #token ~= 32 or not find(token, '^[0-9a-f]+$') then
            ok, status = false, {err = 'a hold token is 32 lowercase hex digits'}
        elseif flag ~= '' and flag ~= 'try' then
            ok, status = false, {err = 'a request is "<hold token> <lease ms> <retention ms>", then "try" or "shared <permits>"'}
        else
            ok, status, value = pcall(acquire, KEYS[k], token, own_lease, own_retention, flag == 'try')
        end
    end
    if not ok then
        status, value = -1, calling .. ' ' .. (type(status) == 'table' and status.err or tostring(status))
    end
    reply[n + 1] = status
    reply[n + 2] = value
    n = n + 2
end
if G then
    for i = 1, #G.grouped do
        local state = G.groups[G.grouped[i]]
        if state then
            G.finish(G.grouped[i], state)
        end
    end
end
return reply
