"""Takes a lock and holds it until the process is killed (the twin of
``tests/src/bin/hold_lock.rs``).

Usage: ``python hold_lock.py <redis-url> <key> <lease-ms>``. Prints ``HELD <fencing token>``
once the lock is taken (its watchdog then renews the lease like any live holder's).
"""

import asyncio
import sys

from relock_redis import Locker


async def main() -> None:
    url, key, lease_ms = sys.argv[1:]
    locker = Locker(url, lease=int(lease_ms) / 1000)
    async with locker.lock(key) as guard:
        print(f"HELD {guard.fencing_token}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
