"""acquire + release of relock-redis ÷ redis-py's own ``Lock`` (same server, same process, one
task), and re-entry without a round trip.

    python python/benches/bench.py [--url redis://127.0.0.1:6379] [--pairs 20] [--blocks 300]

Without ``--url`` it starts a private redis-server (no persistence) on a free port. The two
clients run in alternating blocks of a few pairs (so that a busy machine slows both alike); the
ratio is relock-redis's pairs per second over redis-py's, as the median over adjacent blocks
and over the whole run (higher is better; 1.0 is parity).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import redis
import redis.asyncio

from relock_redis import Locker
from relock_redis import _protocol as protocol


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: apt-get install redis-server (or pass --url)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tempfile.mkdtemp()],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    return process, f"redis://127.0.0.1:{port}"


async def relock_pairs(locker: Locker, pairs: int) -> float:
    """Seconds for ``pairs`` acquire + release of relock-redis."""
    started = time.perf_counter()
    for _ in range(pairs):
        async with locker.lock("bench:relock"):
            pass
    return time.perf_counter() - started


async def script_pairs(client: redis.asyncio.Redis, pairs: int) -> float:
    """Seconds for ``pairs`` of the protocol's acquire and release scripts sent bare (no client
    machinery): the floor any client of the protocol pays."""
    lock, channel = "relock:{bench:scripts}", "relock:{bench:scripts}:released"
    started = time.perf_counter()
    for _ in range(pairs):
        token = os.urandom(16).hex()
        _, fence = await client.evalsha(
            protocol.ACQUIRE.sha, 1, lock, token, 30000, 600000, "0 0 bench")
        await client.evalsha(protocol.RELEASE.sha, 2, lock, channel, token, fence, 600000)
    return time.perf_counter() - started


async def redis_py_pairs(client: redis.asyncio.Redis, pairs: int) -> float:
    """Seconds for ``pairs`` acquire + release of redis-py's ``Lock``."""
    started = time.perf_counter()
    for _ in range(pairs):
        lock = client.lock("bench:redis-py", timeout=30)
        await lock.acquire()
        await lock.release()
    return time.perf_counter() - started


async def reentries(locker: Locker, seconds: float, sync: redis.Redis) -> tuple[float, int]:
    async with locker.lock("bench:reentry"):
        before = int(sync.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
        count, end = 0, time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < end:
            for _ in range(100):
                async with locker.lock("bench:reentry"):
                    pass
            count += 100
        rate = count / (time.perf_counter() - started)
        after = int(sync.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    return rate, after - before


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--pairs", type=int, default=20, help="pairs per block")
    parser.add_argument("--blocks", type=int, default=300, help="blocks per client")
    options = parser.parse_args()
    server = None
    url = options.url
    if url is None:
        server, url = start_server()
    try:
        client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url)
        sync: redis.Redis = redis.Redis.from_url(url)
        locker = Locker(client)
        # Warm up: connections, scripts loaded, the watchdog task started.
        await relock_pairs(locker, 200)
        await redis_py_pairs(client, 200)
        await script_pairs(client, 200)
        ours, theirs, bare = [], [], []
        for block in range(options.blocks):
            # Rotate which goes first, so none always follows another.
            runs = [
                (ours, lambda: relock_pairs(locker, options.pairs)),
                (theirs, lambda: redis_py_pairs(client, options.pairs)),
                (bare, lambda: script_pairs(client, options.pairs)),
            ]
            for times, run in runs[block % 3:] + runs[:block % 3]:
                times.append(await run())
        ratios = [t / o for o, t in zip(ours, theirs)]
        floors = [t / b for b, t in zip(bare, theirs)]
        rate, calls = await reentries(locker, 1.0, sync)
        print(f"python {platform.python_version()}, redis-py {redis.__version__}, "
              f"redis-server {sync.info('server')['redis_version']}, {os.cpu_count()} cpus, "
              f"load {os.getloadavg()[0]:.2f}")
        per_second = lambda seconds: options.pairs / seconds  # noqa: E731
        print(f"relock-redis  acquire+release: median block {per_second(statistics.median(ours)):7.0f}/s, "
              f"overall {options.pairs * len(ours) / sum(ours):7.0f}/s")
        print(f"redis-py Lock acquire+release: median block {per_second(statistics.median(theirs)):7.0f}/s, "
              f"overall {options.pairs * len(theirs) / sum(theirs):7.0f}/s")
        print(f"ratio relock-redis / redis-py (throughput): median of adjacent blocks "
              f"{statistics.median(ratios):.2f}, overall {sum(theirs) / sum(ours):.2f} "
              f"({options.blocks} blocks of {options.pairs} pairs each)")
        print(f"the protocol's two scripts sent bare / redis-py (the floor of any client): median "
              f"{statistics.median(floors):.2f}, overall {sum(theirs) / sum(bare):.2f}; relock-redis / "
              f"bare scripts: overall {sum(bare) / sum(ours):.2f}")
        print(f"re-entry (nested async with on a held key): {rate:,.0f}/s, {calls} EVALSHA sent")
        await locker.aclose()
        await client.aclose()
    finally:
        if server is not None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    asyncio.run(main())
