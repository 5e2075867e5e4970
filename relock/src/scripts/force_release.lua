-- Frees a lock whoever holds it (an operator's tool) and announces the release.
--
-- KEYS[1]  lock `P:{K}`
-- KEYS[2]  release channel `P:{K}:released`
--
-- Reply:   1  a hold was removed
--          0  the lock was already free
if redis.call('DEL', KEYS[1]) == 0 then
    return 0
end

redis.call('PUBLISH', KEYS[2], '')
return 1
