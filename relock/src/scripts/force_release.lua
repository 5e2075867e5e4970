-- Frees a lock whoever holds it (an operator's tool) and announces the release.
--
-- KEYS[1]  lock hash `P:{K}`
-- ARGV[1]  release channel `P:{K}:released`
--
-- Reply:   1  a holder was removed
--          0  the lock was already free
if redis.call('DEL', KEYS[1]) == 0 then
    return 0
end

redis.call('PUBLISH', ARGV[1], '')
return 1
