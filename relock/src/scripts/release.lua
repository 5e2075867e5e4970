-- Releases one hold: frees the lock if the hold still has it, and announces the release.
--
-- KEYS[1]  lock `P:{K}`
-- KEYS[2]  release channel `P:{K}:released` (a key name so that the slot check covers it)
-- KEYS[3]  (Redis Cluster only) receipt `P:{K}:receipt`: the token of the last hold released,
--          so that the cluster client's retry of a release that took effect answers 1 again
-- ARGV[1]  hold token
-- ARGV[2]  (Redis Cluster only) how long the receipt is kept, in milliseconds; with it the
--          release is announced with SPUBLISH on the sharded channel
--
-- Reply:   1  released: the lock is free and the channel was published to (on one server, only if
--             the hold had refused someone), or, on a cluster, this hold's release already
--             happened (a retried request)
--          0  the hold no longer has the lock (its lease ended, it was force-released, or it was
--             released already); nothing was changed
local value = redis.call('GET', KEYS[1])
if not value or string.find(value, ARGV[1], 1, true) ~= 1 then
    if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[1] then
        return 1
    end
    return 0
end

redis.call('DEL', KEYS[1])
if KEYS[3] then
    redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
    redis.call('SPUBLISH', KEYS[2], '')
elseif string.byte(value, 33) == 43 then
    -- On one server only a hold that has refused someone ("+" after its token) is announced:
    -- its waiters subscribed before asking again (see batch.lua).
    redis.call('PUBLISH', KEYS[2], '')
end
return 1
