"""A private ``redis-server`` for the tests: started on a free port without persistence, killed
at the end. A missing ``redis-server`` fails the tests (with an install hint), never skips them."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from relock_redis import Locker

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on a free port."""

    def __init__(self) -> None:
        binary = os.environ.get("REDIS_SERVER", "redis-server")
        if shutil.which(binary) is None:
            pytest.fail(
                f"`{binary}` was not found: the tests need Redis 7 or later "
                "(apt-get install redis-server, brew install redis, or set REDIS_SERVER)",
                pytrace=False,
            )
        self.dir = tempfile.mkdtemp(prefix="relock-py-redis-")
        for _ in range(5):
            self.port = free_port()
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.dir],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._ready():
                return
            self.process.kill()
            self.process.wait()
        pytest.fail("redis-server did not start", pytrace=False)

    def _ready(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                time.sleep(0.02)
        return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator["redis.asyncio.Redis[bytes]"]:
    connection: redis.asyncio.Redis[bytes] = redis.asyncio.Redis.from_url(redis_server.url)
    yield connection
    await connection.aclose()


@pytest.fixture
async def locker(client: "redis.asyncio.Redis[bytes]") -> AsyncIterator[Locker]:
    locker = Locker(client, lease=5, wait=5)
    yield locker
    await locker.aclose()


_counter = itertools.count()


@pytest.fixture
def key() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:{next(_counter)}"


def evalsha_calls(sync_client: "redis.Redis[bytes]") -> int:
    """How many EVALSHA commands the server has run."""
    stats = sync_client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
