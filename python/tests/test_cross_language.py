"""Rust and Python processes on the same locks: exclusion and fencing through kills and stalls,
wake-ups across languages, and ``relock inspect`` showing a Python holder like a Rust one.

The Rust side is the workspace's own binaries (``fenced_worker``, ``lock_on_command`` from
``relock-tests``, ``relock`` from ``relock-cli``), built here with cargo (a no-op when they are
fresh); the Python side is ``fenced_worker.py`` and ``hold_lock.py`` beside this file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import pytest
import redis

from relock_redis import Locker
from relock_redis._protocol import HOST

from .conftest import REPO, RedisServer

HERE = Path(__file__).resolve().parent
MIN_WRITES = 20


@dataclass(frozen=True)
class RustBinaries:
    fenced_worker: Path
    lock_on_command: Path
    relock: Path


@pytest.fixture(scope="session")
def rust() -> RustBinaries:
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail(
            "cargo was not found: the cross-language tests build the Rust workers "
            "(install Rust from https://rustup.rs)",
            pytrace=False,
        )
    # The workspace's binaries as the README's test command builds them (`cargo test --workspace
    # --all-features`, which puts them in target/debug for its integration tests), so that after
    # it this build has nothing to do: `cargo build` would unify features without the
    # dev-dependencies and compile the crates again (about a minute on two cores).
    command = ["test", "--quiet", "--workspace", "--all-features", "--no-run"]
    built = subprocess.run([cargo, *command], cwd=REPO)
    assert built.returncode == 0, f"cargo {' '.join(command)} failed"
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"
    return RustBinaries(target / "fenced_worker", target / "lock_on_command", target / "relock")


@pytest.fixture
def lock_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def store() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def unique_key(name: str) -> str:
    return f"{name}:{uuid.uuid4().hex[:12]}"


# -- the fenced counter ----------------------------------------------------------------------


@dataclass
class Workers:
    """Rust and Python worker processes; SIGKILLed on exit."""

    rust: RustBinaries
    args: list[str]
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    language: dict[int, str] = field(default_factory=dict)

    def spawn(self, language: str) -> None:
        if language == "rust":
            command = [str(self.rust.fenced_worker), *self.args]
        else:
            command = [sys.executable, str(HERE / "fenced_worker.py"), *self.args]
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.children.append((language, child))
        self.language[child.pid] = language

    def replace(self, index: int) -> None:
        language, child = self.children.pop(index)
        self.killed.add(child.pid)
        child.kill()
        child.wait()
        self.spawn(language)

    def pid(self, pid: int) -> bool:
        return any(child.pid == pid for _, child in self.children)

    def kill_all(self) -> None:
        for _, child in self.children:
            child.kill()
            child.wait()
        self.children.clear()


@dataclass
class Outcome:
    written: list[int]
    history: list[tuple[int, int, int]]
    value: int
    stats: dict[str, int]
    stalls: list[str]


async def stall_the_holder(locker: Locker, key: str, workers: Workers, lease: float) -> str:
    """Finds the live worker holding ``key``, SIGSTOPs it for 2 × lease, checks that its hold
    ended on the server meanwhile, and SIGCONTs it."""
    import asyncio

    deadline = time.monotonic() + 5
    while True:
        info = await locker.inspect(key)
        if info is not None and info.pid is not None and workers.pid(info.pid):
            pid = info.pid
            break
        assert info is None or info.pid in workers.killed, f"{key} is held by {info}, no worker"
        assert time.monotonic() < deadline, f"no worker held {key} for 5 s"
        await asyncio.sleep(0.002)
    os.kill(pid, signal.SIGSTOP)
    stopped = await locker.inspect(key)
    token = stopped.fencing_token if stopped is not None and stopped.pid == pid else None
    await asyncio.sleep(2 * lease)
    now = await locker.inspect(key)
    os.kill(pid, signal.SIGCONT)
    if token is not None and now is not None:
        assert now.fencing_token != token, f"pid {pid}'s hold outlived a stop of 2 × its lease"
    return (
        f"stalled {workers.language[pid]} pid {pid}: token when stopped {token}, "
        f"holder when continued {None if now is None else (now.pid, now.fencing_token)}"
    )


async def run_counter(
    rust: RustBinaries, lock_url: str, store_url: str, mode: str, *, per_language: int,
    lease: float, duration: float, stalls: int,
) -> tuple[Outcome, Workers]:
    import asyncio

    key = unique_key("fenced-counter")
    workers = Workers(rust, [lock_url, store_url, key, mode, str(int(lease * 1000))])
    for _ in range(per_language):
        workers.spawn("rust")
        workers.spawn("python")
    locker = Locker(lock_url)
    stall_notes: list[str] = []
    kills = 0
    try:
        started = time.monotonic()
        end = started + duration
        stall_every = duration / (stalls + 1)
        next_stall = started + stall_every
        next_kill = started + random.uniform(1.5, 2.0)
        while time.monotonic() < end:
            now = time.monotonic()
            if len(stall_notes) < stalls and now >= next_stall:
                stall_notes.append(await stall_the_holder(locker, key, workers, lease))
                next_stall += stall_every
            elif now >= next_kill:
                workers.replace(random.randrange(len(workers.children)))
                kills += 1
                next_kill = now + random.uniform(1.5, 2.0)
            else:
                wake = min(next_kill, end, next_stall if len(stall_notes) < stalls else end)
                await asyncio.sleep(max(wake - now, 0))
    finally:
        workers.kill_all()
        await locker.aclose()
    client = redis.Redis.from_url(store_url)
    history = []
    for entry in client.lrange("store:history", 0, -1):
        value, token, pid = entry.decode().split(" ")
        history.append((int(value), int(token), int(pid)))
    outcome = Outcome(
        written=[int(v) for v in client.lrange("store:written", 0, -1)],
        history=history,
        value=int(client.get("store:value") or 0),
        stats={k.decode(): int(v) for k, v in client.hgetall("store:stats").items()},
        stalls=stall_notes,
    )
    writes = Counter(workers.language[pid] for _, _, pid in history)
    print(f"{mode}: {len(history)} writes ({dict(writes)}), {kills} workers killed, stats {outcome.stats}")
    for note in stall_notes:
        print("  " + note)
    return outcome, workers


def check(outcome: Outcome, workers: Workers) -> None:
    twice = [value for value, n in Counter(outcome.written).items() if n > 1]
    assert not twice, f"values written more than once (two holders overlapped): {twice[:20]}"
    assert outcome.written == list(range(1, len(outcome.written) + 1)), "an update was lost or reordered"
    assert outcome.value == len(outcome.written), "the counter disagrees with its writes"
    for (v1, t1, p1), (v2, t2, p2) in zip(outcome.history, outcome.history[1:]):
        assert t2 > t1, (
            f"fencing tokens went backwards: value {v1} token {t1} by {workers.language[p1]} "
            f"pid {p1}, then value {v2} token {t2} by {workers.language[p2]} pid {p2}"
        )
    assert len(outcome.written) >= MIN_WRITES, f"only {len(outcome.written)} writes"
    languages = [workers.language[pid] for _, _, pid in outcome.history]
    assert {"rust", "python"} <= set(languages), f"not both languages wrote: {Counter(languages)}"
    switches = sum(1 for a, b in zip(languages, languages[1:]) if a != b)
    assert switches >= 4, f"the lock passed between languages only {switches} times"


async def test_rust_and_python_workers_share_a_fenced_counter_through_kills_and_stalls(
    rust: RustBinaries, lock_server: RedisServer, store: RedisServer
) -> None:
    outcome, workers = await run_counter(
        rust, lock_server.url, store.url, "fenced", per_language=2, lease=0.6, duration=20, stalls=5,
    )
    check(outcome, workers)
    print(
        f"the store rejected {outcome.stats.get('rejected_reads', 0)} stale reads and "
        f"{outcome.stats.get('rejected_writes', 0)} stale writes"
    )


async def test_rust_and_python_workers_exclude_each_other_on_an_unfenced_counter_through_kills(
    rust: RustBinaries, lock_server: RedisServer, store: RedisServer
) -> None:
    outcome, workers = await run_counter(
        rust, lock_server.url, store.url, "unfenced", per_language=2, lease=0.6, duration=12, stalls=0,
    )
    check(outcome, workers)


# -- wake-ups across languages ---------------------------------------------------------------


class RustLocker:
    """A ``lock_on_command`` process: takes and releases a lock when told to."""

    def __init__(self, binary: Path, url: str) -> None:
        self.process = subprocess.Popen(
            [str(binary), url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def send(self, line: str) -> None:
        stdin: IO[str] = self.process.stdin  # type: ignore[assignment]
        stdin.write(line + "\n")
        stdin.flush()

    def read(self) -> list[str]:
        stdout: IO[str] = self.process.stdout  # type: ignore[assignment]
        line = stdout.readline()
        assert line, "lock_on_command exited"
        return line.split()

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def rust_locker(rust: RustBinaries, lock_server: RedisServer) -> Iterator[RustLocker]:
    locker = RustLocker(rust.lock_on_command, lock_server.url)
    yield locker
    locker.close()


async def test_a_python_waiter_is_woken_by_a_rust_release_within_milliseconds(
    rust_locker: RustLocker, lock_server: RedisServer
) -> None:
    import asyncio

    locker = Locker(lock_server.url)
    latencies = []
    try:
        for _ in range(5):
            key = unique_key("wake-python")
            rust_locker.send(f"lock {key} 1000 30000")
            held, rust_token, _ = rust_locker.read()
            assert held == "HELD"

            async def wait() -> tuple[int, int]:
                async with locker.lock(key, wait=10) as guard:
                    return time.time_ns(), guard.fencing_token

            waiter = asyncio.create_task(wait())
            await asyncio.sleep(0.3)  # refused, subscribed, refused again: now asleep
            assert not waiter.done()
            await asyncio.to_thread(rust_locker.send, "release")
            released, before, _after = await asyncio.to_thread(rust_locker.read)
            assert released == "RELEASED"
            woke, token = await waiter
            assert token > int(rust_token)
            latencies.append((woke - int(before)) / 1e6)
    finally:
        await locker.aclose()
    print(f"python woken by a rust release after {[round(ms, 1) for ms in latencies]} ms")
    assert max(latencies) < 200, latencies


async def test_a_rust_waiter_is_woken_by_a_python_release_within_milliseconds(
    rust_locker: RustLocker, lock_server: RedisServer
) -> None:
    import asyncio

    locker = Locker(lock_server.url)
    latencies = []
    try:
        for _ in range(5):
            key = unique_key("wake-rust")
            guard = await locker.lock(key, lease=30)
            rust_locker.send(f"lock {key} 10000 30000")
            await asyncio.sleep(0.3)  # refused, subscribed, refused again: now asleep
            before = time.time_ns()
            await guard.release()
            held, token, granted = await asyncio.to_thread(rust_locker.read)
            assert held == "HELD"
            assert int(token) > guard.fencing_token
            latencies.append((int(granted) - before) / 1e6)
            rust_locker.send("release")
            assert (await asyncio.to_thread(rust_locker.read))[0] == "RELEASED"
    finally:
        await locker.aclose()
    print(f"rust woken by a python release after {[round(ms, 1) for ms in latencies]} ms")
    assert max(latencies) < 200, latencies


def test_a_killed_python_holder_s_lock_passes_to_rust_after_its_lease(
    rust_locker: RustLocker, lock_server: RedisServer
) -> None:
    key = unique_key("killed-python")
    holder = subprocess.Popen(
        [sys.executable, str(HERE / "hold_lock.py"), lock_server.url, key, "500"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        held, python_token = holder.stdout.readline().split()
        assert held == "HELD"
        time.sleep(0.8)  # renewed past its first lease
        holder.kill()
        holder.wait()
        killed = time.monotonic()
        rust_locker.send(f"lock {key} 5000 30000")
        held, token, _ = rust_locker.read()
        waited = time.monotonic() - killed
        assert held == "HELD" and int(token) > int(python_token)
        assert waited < 1.0, f"the lock passed {waited:.3f}s after the kill, lease 0.5 s"
    finally:
        holder.kill()
        holder.wait()


# -- relock inspect --------------------------------------------------------------------------


def cli_inspect(rust: RustBinaries, url: str, key: str) -> dict[str, object]:
    shown = subprocess.run(
        [str(rust.relock), "--url", url, "--json", "inspect", key],
        capture_output=True, text=True, timeout=30,
    )
    assert shown.returncode == 0, f"relock inspect failed: {shown.stderr}"
    return dict(json.loads(shown.stdout))


async def test_relock_inspect_shows_a_python_holder_like_a_rust_one(
    rust: RustBinaries, rust_locker: RustLocker, lock_server: RedisServer
) -> None:
    locker = Locker(lock_server.url)
    try:
        key = unique_key("inspect")
        async with locker.lock(key, lease=30) as guard:
            python = cli_inspect(rust, lock_server.url, key)
            table = subprocess.run(
                [str(rust.relock), "--url", lock_server.url, "inspect", key],
                capture_output=True, text=True, timeout=30,
            )
        rust_locker.send(f"lock {key} 1000 30000")
        held, rust_token, _ = rust_locker.read()
        rust_side = cli_inspect(rust, lock_server.url, key)
    finally:
        await locker.aclose()
    print(f"relock inspect of a python holder: {python}\n{table.stdout}")
    print(f"relock inspect of a rust holder: {rust_side}")
    assert python["pid"] == os.getpid()
    assert python["host"] == HOST
    assert python["fencing_token"] == guard.fencing_token
    assert table.returncode == 0 and str(os.getpid()) in table.stdout and str(guard.fencing_token) in table.stdout
    assert rust_side["pid"] == rust_locker.process.pid
    assert rust_side["fencing_token"] == int(rust_token)
    assert sorted(python) == sorted(rust_side), "the two holders show different fields"
    assert rust_side["host"] == python["host"]
