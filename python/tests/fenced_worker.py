"""The Python twin of ``tests/src/bin/fenced_worker.rs``: increments a counter kept in a separate
store, under a relock lock, forever, with the same store scripts and keys, so Rust and Python
workers can share one counter.

Usage: ``python fenced_worker.py <lock-url> <store-url> <key> <fenced|unfenced> <lease-ms>``.

Each round takes ``key`` (``Locker.run``, 5 s wait), reads the counter from the store with the
hold's fencing token, pauses 10–30 ms and writes the value read plus one. The pause is, at
random, an ``asyncio.sleep`` (a SIGSTOP landing there ends in the body being cancelled with
``Lost`` when the process wakes: ``run`` checks the hold before every step) or a blocking
``time.sleep`` (the write then leaves in the same step, and only the store's token check can
stop it). Every accepted write appends to ``store:written`` and ``"<value> <token> <pid>"`` to
``store:history``; round outcomes are counted in the ``store:stats`` hash.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time

import redis.asyncio

from relock_redis import BackendError, Locker, Lost, Timeout, current_guard

VALUE, MAX_TOKEN, WRITTEN, HISTORY, STATS = (
    "store:value", "store:max_token", "store:written", "store:history", "store:stats",
)

# The Rust worker's scripts, verbatim: tokens compared as decimal strings.
OLDER = """
local function older(token, max)
  if #token ~= #max then return #token < #max end
  return token < max
end
"""
FENCED_READ = OLDER + """
local token = ARGV[1]
if not string.match(token, '^%d+$') then return redis.error_reply('token is not a decimal') end
local max = redis.call('GET', KEYS[2])
if max and older(token, max) then
  redis.call('HINCRBY', KEYS[3], 'rejected_reads', 1)
  return {'stale', max}
end
redis.call('SET', KEYS[2], token)
return {'ok', redis.call('GET', KEYS[1]) or '0'}
"""
FENCED_WRITE = OLDER + """
local token = ARGV[1]
if not string.match(token, '^%d+$') then return redis.error_reply('token is not a decimal') end
local max = redis.call('GET', KEYS[2])
if max and older(token, max) then
  redis.call('HINCRBY', KEYS[5], 'rejected_writes', 1)
  return {'stale', max}
end
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('RPUSH', KEYS[4], ARGV[2] .. ' ' .. token .. ' ' .. ARGV[3])
return {'ok', ARGV[2]}
"""


class Stale(Exception):
    """The store rejected the read or the write: a newer token had touched it."""


async def main() -> None:
    if len(sys.argv) != 6:
        sys.exit("usage: fenced_worker.py <lock-url> <store-url> <key> <fenced|unfenced> <lease-ms>")
    lock_url, store_url, key, mode, lease_ms = sys.argv[1:]
    if mode not in ("fenced", "unfenced"):
        sys.exit(f"mode is `fenced` or `unfenced`, not {mode!r}")
    lease = int(lease_ms) / 1000
    pid = str(os.getpid())
    locker = Locker(lock_url)
    store: redis.asyncio.Redis[bytes] = redis.asyncio.Redis.from_url(store_url)
    read = store.register_script(FENCED_READ)
    write = store.register_script(FENCED_WRITE)

    async def body() -> None:
        guard = current_guard()
        assert guard is not None, "run's body holds its key"
        token = str(guard.fencing_token)
        pause = random.uniform(0.010, 0.030)
        if mode == "fenced":
            status, value = await read(keys=[VALUE, MAX_TOKEN, STATS], args=[token])
            if status != b"ok":
                raise Stale
        else:
            value = await store.get(VALUE) or b"0"
        if random.random() < 0.5:
            time.sleep(pause)
        else:
            await asyncio.sleep(pause)
        new = str(int(value) + 1)
        if mode == "fenced":
            status, _ = await write(keys=[VALUE, MAX_TOKEN, WRITTEN, HISTORY, STATS], args=[token, new, pid])
            if status != b"ok":
                raise Stale
        else:
            pipe = store.pipeline(transaction=True)
            pipe.set(VALUE, new).rpush(WRITTEN, new).rpush(HISTORY, f"{new} {token} {pid}")
            await pipe.execute()

    while True:
        try:
            await locker.run(key, body(), wait=5, lease=lease)
            outcome = "ok"
        except Stale:
            outcome = "stale"
        except Timeout:
            outcome = "timeout"
        except Lost:
            outcome = "lost"
        except BackendError as err:
            print(f"fenced_worker.py {pid}: lock backend error: {err}", file=sys.stderr)
            outcome = "backend"
        except redis.RedisError as err:
            print(f"fenced_worker.py {pid}: store error: {err}", file=sys.stderr)
            outcome = "store"
        try:
            await store.hincrby(STATS, outcome, 1)
        except redis.RedisError as err:
            print(f"fenced_worker.py {pid}: cannot count {outcome}: {err}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
