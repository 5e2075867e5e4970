-- PROTOTYPE (not used by relock): a group commit of shared requests on ONE key in the hash
-- layout of acquire_shared_hash.lua and release_shared_hash.lua: each request is answered as
-- those scripts would answer it alone, in order (releases first, as batch.lua sends them), with
-- one read and one write of the hash per call. Loaded and measured by drive.py (read-hash-batch):
--
--     benches/callgrind/count.sh read-hash-batch 5000 64      (from the repository root)
--
-- KEYS[1]  lock `P:{K}`, KEYS[2] its release channel `P:{K}:released`
-- ARGV[1]  lease ms, ARGV[2] retention ms, ARGV[3] permits (0: readers), ARGV[4] how many of the
--          requests are releases; then per request "<fencing token> <hold token>" (a release,
--          fencing token 0 when unknown) or "<hold token>" (an acquisition)
-- Reply:   two items per request: an acquisition as acquire_shared_hash.lua's reply, a release
--          its status and 0. A key that is not a relock hash or absent (a string form, a foreign
--          value) is left to the single scripts: this prototype answers an error for the call.
--
-- Calls per batch: TIME, one HMGET (header and every request's field), one HMGET of the ring
-- slots a full ring recycles, one HDEL (the entries those slots name), one HSET (header and every
-- changed field), one PEXPIRE, and one PUBLISH when a release frees a hold someone waited for
-- (one message per call wakes every waiter, as one per release would; no SPUBLISH for a Cluster
-- in this prototype). An HGETALL reclaims
-- holders past their deadline when the header's earliest deadline has passed (see
-- acquire_shared_hash.lua), once per call at most: every grant of the call ends later than now.
local LAYOUT = 'relock shared holds, hash layout prototype: see benches/callgrind/HASH_LAYOUT.md'
-- The ring's field names, as constants of the script (a number's text costs a sprintf).
local SLOTS = {
    'r0', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13',
    'r14', 'r15', 'r16', 'r17', 'r18', 'r19', 'r20', 'r21', 'r22', 'r23', 'r24', 'r25', 'r26',
    'r27', 'r28', 'r29', 'r30', 'r31'
}
local key = KEYS[1]
local lease, retention, permits, releases = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
local clock = time[1] .. string.rep('0', 6 - #time[2]) .. time[2]
local deadline_text = string.format('%.0f', now + tonumber(lease))

-- Each request's hold token, and (releases) whether its fencing token is unknown.
local n = #ARGV - 4
local tokens, unknown, fields = {}, {}, {'*'}
for k = 1, n do
    local request = ARGV[k + 4]
    if k <= releases then
        local fence, token = string.match(request, '^(%d+) (%x+)$')
        tokens[k], unknown[k] = token or request, fence == '0'
    else
        tokens[k] = request
    end
    fields[k + 1] = tokens[k]
end
local got = redis.pcall('HMGET', key, unpack(fields))
if got.err then
    return redis.error_reply('prototype: ' .. got.err .. ' (a string form is the single scripts\')')
end
local header = got[1]
local fresh = not header
local last, have, until_ms, waited, live, earliest, latest, seq
if fresh then
    if redis.call('EXISTS', key) == 1 then
        return redis.error_reply('prototype: ' .. key .. ' is a hash relock did not write')
    end
    last, have, until_ms, waited, live, earliest, latest, seq = nil, permits, '0', '0', 0, '0', '0', 0
else
    last, have, until_ms, waited, live, earliest, latest, seq =
        string.match(header, '^(%d+) (%d+) (%d+) ([01]) (%d+) (%d+) (%d+) (%d+)$')
    if not last then
        return redis.error_reply('prototype: ' .. key .. ' is a hash relock did not write')
    end
    live, seq = tonumber(live), tonumber(seq)
end
local writer, earliest_at, latest_at = tonumber(until_ms), tonumber(earliest), tonumber(latest)

-- cur: every field this call knows (false: absent); changed: the fields to write (or delete).
local cur, changed = {}, {}
for k = 1, n do
    cur[tokens[k]] = got[k + 1]
end
local function set(field, value)
    cur[field], changed[field] = value, true
end

if live > 0 and now >= earliest_at then
    -- Some holder may be past its deadline (see acquire_shared_hash.lua).
    local all = redis.call('HGETALL', key)
    live, earliest_at = 0, 0
    for i = 1, #all, 2 do
        local field, entry = all[i], all[i + 1]
        if #field == 32 and string.byte(entry, 1) ~= 45 then
            local deadline = tonumber(string.match(entry, '^%d+'))
            if deadline <= now then
                set(field, false)
            else
                live = live + 1
                if earliest_at == 0 or deadline < earliest_at then
                    earliest_at = deadline
                end
            end
        end
    end
    earliest = string.format('%.0f', earliest_at)
    changed['*'] = true
end

-- The ring slots a full ring recycles in this call, read at once.
local ring = {}
if releases > 0 and seq + releases > 32 then
    local slots = {}
    for s = math.max(seq, 32), seq + releases - 1 do
        slots[#slots + 1] = SLOTS[s % 32 + 1]
        if #slots == 32 then
            break
        end
    end
    local names = redis.call('HMGET', key, unpack(slots))
    for i = 1, #slots do
        ring[slots[i]] = names[i]
    end
end

-- Records a released entry in the ring, dropping the oldest when 32 are kept.
local function record(token, entry)
    local slot = SLOTS[seq % 32 + 1]
    if seq >= 32 then
        local oldest = cur[slot]
        if oldest == nil then
            oldest = ring[slot]
        end
        if oldest then
            set(oldest, false)
        end
    end
    set(token, entry)
    set(slot, token)
    seq = seq + 1
    changed['*'] = true
end

local reply, freed, named, waited_before = {}, false, false, waited
for k = 1, releases do
    local token, own = tokens[k], cur[tokens[k]]
    local status = 0
    if #token ~= 32 then
        status = 0
    elseif own and string.byte(own, 1) == 45 then
        status = 2
    elseif own then
        live = live - 1
        record(token, '-' .. own)
        status, freed = 1, true
    elseif unknown[k] then
        record(token, '-' .. (now + tonumber(retention)) .. ' 0')
        named = true
    end
    reply[2 * k - 1], reply[2 * k] = status, 0
end

local granted = false
for k = releases + 1, n do
    local token, own = tokens[k], cur[tokens[k]]
    local answer
    if #token ~= 32 or not string.find(token, '^[0-9a-f]+$') then
        answer = {-1, 'a hold token is 32 lowercase hex digits'}
    elseif own and string.byte(own, 1) == 45 then
        answer = {2, 0}
    elseif own and tonumber(string.match(own, '^%d+')) > now then
        answer = {1, tonumber(string.match(own, '(%d+)$'))}
    elseif live > 0 and have ~= permits then
        answer = {3, tonumber(have)}
    elseif writer > now then
        answer = {0, writer - now}
    elseif permits ~= '0' and live >= tonumber(permits) then
        answer = {0, earliest_at - now}
    else
        local fence, text
        if permits == '0' and last and last ~= '0' then
            fence, text = tonumber(last), last
        else
            fence, text = tonumber(clock), clock
            if last then
                if #last > 16 or (#last == 16 and last > '9007199254740990') then
                    answer = {-1, 'the fencing token is ' .. last .. ', at the limit of exact arithmetic'}
                elseif tonumber(last) >= fence then
                    fence = tonumber(last) + 1
                    text = string.format('%.0f', fence)
                end
            end
        end
        if not answer then
            -- A grant: the token has no entry (a live one answered above, an expired one was
            -- reclaimed above), so it adds one holder.
            if live == 0 then
                earliest, earliest_at = deadline_text, now + tonumber(lease)
            end
            latest = deadline_text
            last, have, live = text, permits, live + 1
            set(token, deadline_text .. ' ' .. text)
            changed['*'] = true
            granted = true
            answer = {1, fence}
        end
    end
    if answer[1] == 0 and waited == '0' then
        waited = '1'
        changed['*'] = true
    end
    reply[2 * k - 1], reply[2 * k] = answer[1], answer[2]
end

if changed['*'] then
    if not last then
        -- Only releases on a new key: it keeps no fencing token (the next grant takes the clock's).
        last = '0'
    end
    local writes, deletes = {'*', last .. ' ' .. have .. ' ' .. until_ms .. ' ' .. waited .. ' ' ..
        live .. ' ' .. earliest .. ' ' .. latest .. ' ' .. seq}, {}
    if fresh then
        writes[3], writes[4] = '~', LAYOUT
    end
    for field in pairs(changed) do
        if field ~= '*' then
            local value = cur[field]
            if value then
                writes[#writes + 1] = field
                writes[#writes + 1] = value
            else
                deletes[#deletes + 1] = field
            end
        end
    end
    if #deletes > 0 then
        redis.call('HDEL', key, unpack(deletes))
    end
    redis.call('HSET', key, unpack(writes))
    if granted or named then
        -- At least every lease and the retention (a named release lives until now + retention).
        local expiry = (granted and tonumber(lease) > tonumber(retention)) and lease or retention
        if fresh then
            redis.call('PEXPIRE', key, expiry)
        else
            redis.call('PEXPIRE', key, expiry, 'GT')
        end
    end
end
if freed and waited_before == '1' then
    redis.call('PUBLISH', KEYS[2], '')
end
return reply
