"""acquire + release of relock-redis ÷ redis-py's own ``Lock`` (same server, same process, one
task), and re-entry without a round trip.

    python python/benches/bench.py [--url redis://127.0.0.1:6379] [--seconds 0.25] [--rounds 40]

Without ``--url`` it starts a private redis-server (no persistence) on a free port. The two
clients run in alternating short rounds of equal length (so that a busy machine slows both
alike); the ratio is relock-redis's pairs per second over redis-py's, round by round (median)
and over all rounds (higher is better; 1.0 is parity).
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


async def relock_pairs(locker: Locker, seconds: float) -> float:
    count, end = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        for _ in range(50):
            async with locker.lock("bench:relock"):
                pass
        count += 50
    return count / (time.perf_counter() - started)


async def redis_py_pairs(client: "redis.asyncio.Redis[bytes]", seconds: float) -> float:
    count, end = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        for _ in range(50):
            lock = client.lock("bench:redis-py", timeout=30)
            await lock.acquire()
            await lock.release()
        count += 50
    return count / (time.perf_counter() - started)


async def reentries(locker: Locker, seconds: float, sync: "redis.Redis[bytes]") -> tuple[float, int]:
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
    parser.add_argument("--seconds", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=40)
    options = parser.parse_args()
    server = None
    url = options.url
    if url is None:
        server, url = start_server()
    try:
        client: redis.asyncio.Redis[bytes] = redis.asyncio.Redis.from_url(url)
        sync: redis.Redis[bytes] = redis.Redis.from_url(url)
        locker = Locker(client)
        # Warm up: connections, scripts loaded, the watchdog task started.
        await relock_pairs(locker, 0.3)
        await redis_py_pairs(client, 0.3)
        ours, theirs = [], []
        for _ in range(options.rounds):
            ours.append(await relock_pairs(locker, options.seconds))
            theirs.append(await redis_py_pairs(client, options.seconds))
        ratios = [a / b for a, b in zip(ours, theirs)]
        rate, calls = await reentries(locker, 1.0, sync)
        print(f"python {platform.python_version()}, redis-py {redis.__version__}, "
              f"redis-server {sync.info('server')['redis_version']}, {os.cpu_count()} cpus, "
              f"load {os.getloadavg()[0]:.2f}")
        print(f"relock-redis  acquire+release: median {statistics.median(ours):8.0f}/s")
        print(f"redis-py Lock acquire+release: median {statistics.median(theirs):8.0f}/s")
        print(f"ratio relock-redis / redis-py: median of rounds {statistics.median(ratios):.2f}, "
              f"overall {sum(ours) / sum(theirs):.2f} ({options.rounds} rounds of {options.seconds}s each)")
        print(f"re-entry (nested async with on a held key): {rate:,.0f}/s, {calls} EVALSHA sent")
        await locker.aclose()
        await client.aclose()
    finally:
        if server is not None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    asyncio.run(main())
