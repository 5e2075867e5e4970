-- Frees a lock whoever holds it (an operator's tool) and announces the release.
--
-- KEYS[1]  lock `P:{K}`
-- KEYS[2]  release channel `P:{K}:released`
-- KEYS[3]  fencing counter `P:{K}:fence`
-- ARGV[1]  (Redis Cluster only) "sharded": announce with SPUBLISH on the sharded channel
--
-- Reply:   {removed, last}  removed: 1 if a hold was removed, 0 if the lock was already free;
--                           last: the last fencing token handed out for the key (0 if none is
--                           kept), so that a grant with a larger token is known to come after
--                           this release
local last = tonumber(redis.call('GET', KEYS[3])) or 0
if redis.call('DEL', KEYS[1]) == 0 then
    return {0, last}
end

if ARGV[1] == 'sharded' then
    redis.call('SPUBLISH', KEYS[2], '')
else
    redis.call('PUBLISH', KEYS[2], '')
end
return {1, last}
