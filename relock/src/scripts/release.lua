-- Releases one hold: frees the lock if the hold still has it, and announces the release.
--
-- KEYS[1]  lock `P:{K}`
-- KEYS[2]  release channel `P:{K}:released` (a key name so that the slot check covers it)
-- ARGV[1]  hold token
--
-- Reply:   1  released: the lock is free and the channel was published to
--          0  the hold no longer has the lock (its lease ended, it was force-released, or it was
--             released already); nothing was changed
local value = redis.call('GET', KEYS[1])
if not value or string.sub(value, 1, 32) ~= ARGV[1] then
    return 0
end

redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], '')
return 1
