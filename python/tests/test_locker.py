"""The client's behaviour against a private redis-server."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import redis

from relock_redis import (
    BackendError,
    InvalidKey,
    InvalidLease,
    Locker,
    Lost,
    Timeout,
    WouldDeadlock,
    current_guard,
    locked,
)

from .conftest import RedisServer, evalsha_calls

REPO_SCRIPTS = Path(__file__).resolve().parents[2] / "relock" / "src" / "scripts"


@pytest.fixture
def sync_client(redis_server: RedisServer) -> "redis.Redis[bytes]":
    return redis.Redis.from_url(redis_server.url)


async def test_a_lock_is_taken_and_released(locker: Locker, key: str) -> None:
    async with locker.lock(key) as guard:
        assert guard.is_held and not guard.is_reentrant
        assert guard.key == key
        info = await locker.inspect(key)
        assert info is not None
        assert info.fencing_token == guard.fencing_token
        assert info.pid == os.getpid()
        assert info.host
        assert 4 < info.ttl <= 5
    assert not guard.is_held
    assert await locker.inspect(key) is None


async def test_fencing_tokens_increase_with_every_hold(locker: Locker, key: str) -> None:
    tokens = []
    for _ in range(5):
        async with locker.lock(key) as guard:
            tokens.append(guard.fencing_token)
    assert tokens == sorted(set(tokens))


async def test_a_lock_is_written_in_the_protocol_s_layout(
    locker: Locker, key: str, sync_client: "redis.Redis[bytes]"
) -> None:
    async with locker.lock(key) as guard:
        value = sync_client.get(f"relock:{{{key}}}").decode()
        token, rest = value[:32], value[33:].split(" ")
        assert int(token, 16) >= 0 and value[32] == " "
        assert int(rest[0]) == guard.fencing_token
        assert int(rest[2]) == os.getpid()
    value = sync_client.get(f"relock:{{{key}}}").decode()
    assert value == f"-{guard.fencing_token} {token}"


async def test_await_gives_a_guard_to_release_yourself(locker: Locker, key: str) -> None:
    guard = await locker.lock(key)
    assert (await locker.inspect(key)) is not None
    await guard.release()
    assert await locker.inspect(key) is None
    await guard.release()  # a second release does nothing


async def test_try_lock_returns_none_while_another_owner_holds(
    locker: Locker, client: "redis.asyncio.Redis[bytes]", key: str
) -> None:
    other = Locker(client)
    try:
        async with other.lock(key):
            assert await locker.try_lock(key) is None
        guard = await locker.try_lock(key)
        assert guard is not None
        async with guard:
            assert guard.is_held
        assert await locker.inspect(key) is None
    finally:
        await other.aclose()


async def test_nested_lock_on_the_same_key_re_enters_without_a_round_trip(
    locker: Locker, key: str, sync_client: "redis.Redis[bytes]"
) -> None:
    async with locker.lock(key) as outer:
        before = evalsha_calls(sync_client)
        async with locker.lock(key) as inner:
            assert inner.is_reentrant
            assert inner.fencing_token == outer.fencing_token
            again = await locker.try_lock(key)
            assert again is not None and again.is_reentrant
        assert evalsha_calls(sync_client) == before
        assert outer.is_held
        assert current_guard() is not None and current_guard().fencing_token == outer.fencing_token  # type: ignore[union-attr]
    assert current_guard() is None


async def test_a_task_created_inside_the_scope_shares_it(
    locker: Locker, key: str, sync_client: "redis.Redis[bytes]"
) -> None:
    async def child() -> int:
        async with locker.lock(key, wait=0) as guard:
            assert guard.is_reentrant
            return guard.fencing_token

    async with locker.lock(key) as guard:
        before = evalsha_calls(sync_client)
        tokens = await asyncio.gather(asyncio.create_task(child()), asyncio.create_task(child()))
        assert tokens == [guard.fencing_token] * 2
        assert evalsha_calls(sync_client) == before


async def test_unrelated_tasks_exclude_each_other(locker: Locker, key: str) -> None:
    inside = 0
    most = 0

    async def worker() -> None:
        nonlocal inside, most
        for _ in range(5):
            async with locker.lock(key, wait=10):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.002)
                inside -= 1

    await asyncio.gather(*(worker() for _ in range(4)))
    assert most == 1


async def test_a_waiter_times_out(locker: Locker, client: "redis.asyncio.Redis[bytes]", key: str) -> None:
    other = Locker(client)
    try:
        async with other.lock(key, lease=5):
            started = time.monotonic()
            with pytest.raises(Timeout) as raised:
                async with locker.lock(key, wait=0.2):
                    pass
            assert 0.19 < time.monotonic() - started < 1.0
            assert raised.value.holder_ttl is not None and raised.value.holder_ttl > 4
    finally:
        await other.aclose()


async def test_a_waiter_is_woken_by_the_release_without_polling(
    locker: Locker, client: "redis.asyncio.Redis[bytes]", key: str,
    sync_client: "redis.Redis[bytes]",
) -> None:
    other = Locker(client)
    try:
        guard = await other.lock(key, lease=30)
        waiter = asyncio.create_task(locker.lock(key, wait=10)._acquire())
        await asyncio.sleep(0.5)
        before = evalsha_calls(sync_client)
        released = time.monotonic()
        await guard.release()
        got = await waiter
        woke = time.monotonic() - released
        # The release, and one attempt of the waiter: nothing in between while it waited.
        assert evalsha_calls(sync_client) - before == 2
        assert woke < 0.2, f"woken {woke * 1000:.1f} ms after the release"
        await got.release()
    finally:
        await other.aclose()


async def test_a_crashed_holder_s_lease_wakes_the_waiter(
    locker: Locker, sync_client: "redis.Redis[bytes]", key: str
) -> None:
    # A hold written by a process that died: no release will be announced.
    sync_client.set(f"relock:{{{key}}}", f"{'ab' * 16} 5 {int(time.time() * 1000) + 300} 1 1 gone", px=600_000)
    started = time.monotonic()
    async with locker.lock(key, wait=5) as guard:
        assert guard.fencing_token > 5
    assert 0.2 < time.monotonic() - started < 1.0


async def test_leases_are_renewed(locker: Locker, key: str) -> None:
    async with locker.lock(key, lease=0.3) as guard:
        await asyncio.sleep(1.0)
        assert guard.is_held
        info = await locker.inspect(key)
        assert info is not None and info.fencing_token == guard.fencing_token


async def test_many_holds_are_renewed_in_one_pipeline_per_tick(
    locker: Locker, key: str, sync_client: "redis.Redis[bytes]"
) -> None:
    pipelines = 0
    make_pipeline = locker.redis.pipeline

    def counting_pipeline(*args: object, **kwargs: object) -> object:
        nonlocal pipelines
        pipelines += 1
        return make_pipeline(*args, **kwargs)  # type: ignore[arg-type]

    locker.redis.pipeline = counting_pipeline  # type: ignore[method-assign,assignment]
    guards = [await locker.lock(f"{key}:{n}", lease=0.6) for n in range(20)]
    before = evalsha_calls(sync_client)
    await asyncio.sleep(0.3)  # one tick: lease / 3 after the first grant
    renewals = evalsha_calls(sync_client) - before
    assert renewals == 20, renewals
    assert pipelines == 1, pipelines
    assert all(guard.is_held for guard in guards)
    for guard in guards:
        await guard.release()


async def test_a_force_released_hold_is_lost_and_its_block_cancelled(
    locker: Locker, client: "redis.asyncio.Redis[bytes]", key: str
) -> None:
    operator = Locker(client)
    try:
        with pytest.raises(Lost):
            async with locker.lock(key, lease=0.3) as guard:
                assert await operator.force_release(key)
                await asyncio.sleep(5)  # cancelled at the next renewal
        assert guard.lost.is_set() and not guard.is_held
    finally:
        await operator.aclose()


async def test_on_lost_continue_lets_the_block_run_and_reports_the_loss(
    locker: Locker, client: "redis.asyncio.Redis[bytes]", key: str
) -> None:
    operator = Locker(client)
    try:
        finished = False
        with pytest.raises(Lost):
            async with locker.lock(key, lease=0.3, on_lost="continue") as guard:
                await operator.force_release(key)
                await asyncio.wait_for(guard.lost.wait(), 2)
                finished = True
        assert finished
    finally:
        await operator.aclose()


async def test_release_after_the_lease_ended_raises_lost_and_leaves_the_new_holder_alone(
    locker: Locker, client: "redis.asyncio.Redis[bytes]", key: str
) -> None:
    guard = await locker.lock(key, lease=0.2)
    time.sleep(0.3)  # the whole process stalls past the lease
    assert not guard.is_held
    other = Locker(client)
    try:
        async with other.lock(key, wait=1) as newer:
            with pytest.raises(Lost):
                await guard.release()
            info = await other.inspect(key)
            assert info is not None and info.fencing_token == newer.fencing_token
    finally:
        await other.aclose()


async def test_run_never_steps_the_body_after_a_stall_past_the_lease(locker: Locker, key: str) -> None:
    steps = []

    async def body() -> None:
        steps.append("read")
        await asyncio.sleep(0)
        time.sleep(0.3)  # blocking: the lease ends here
        steps.append("blocked")
        await asyncio.sleep(0.01)
        steps.append("write")

    with pytest.raises(Lost):
        await locker.run(key, body(), lease=0.2)
    assert steps == ["read", "blocked"]


async def test_run_returns_the_body_s_result_and_re_enters(locker: Locker, key: str) -> None:
    async def body() -> int:
        async with locker.lock(key, wait=0) as inner:
            assert inner.is_reentrant
        return 42

    assert await locker.run(key, body()) == 42
    assert await locker.inspect(key) is None


async def test_a_cancelled_block_is_released_in_the_background(locker: Locker, key: str) -> None:
    entered = asyncio.Event()

    async def holder() -> None:
        async with locker.lock(key):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(holder())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if await locker.inspect(key) is None:
            break
        await asyncio.sleep(0.005)
    assert await locker.inspect(key) is None


async def test_a_cancelled_waiter_leaves_nothing_held(
    locker: Locker, client: "redis.asyncio.Redis[bytes]", key: str
) -> None:
    other = Locker(client)
    try:
        guard = await other.lock(key)
        waiter = asyncio.create_task(locker.lock(key, wait=10)._acquire())
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await guard.release()
        await asyncio.sleep(0.05)
        assert await locker.inspect(key) is None
    finally:
        await other.aclose()


async def test_an_acquisition_cancelled_in_flight_is_released_in_the_background(
    locker: Locker, key: str
) -> None:
    # Cancelled right after the request was written: the grant may land, and must not stay.
    for _ in range(20):
        task = asyncio.create_task(locker.lock(key, lease=30)._acquire())
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        try:
            guard = await task
            await guard.release()
        except asyncio.CancelledError:
            pass
    await asyncio.sleep(0.1)
    assert await locker.inspect(key) is None


async def test_a_bare_guard_waited_on_by_its_own_task_is_a_deadlock(locker: Locker, key: str) -> None:
    guard = await locker.lock(key)
    with pytest.raises(WouldDeadlock):
        await locker.lock(key, wait=0.1)
    await guard.release()


async def test_invalid_keys_and_leases_send_nothing(
    locker: Locker, sync_client: "redis.Redis[bytes]"
) -> None:
    before = evalsha_calls(sync_client)
    with pytest.raises(InvalidKey):
        async with locker.lock("order:{42}"):
            pass
    with pytest.raises(InvalidKey):
        await locker.inspect("")
    with pytest.raises(InvalidLease):
        await locker.lock("fine", lease=0)
    assert evalsha_calls(sync_client) == before


async def test_an_unreachable_server_is_a_backend_error(key: str) -> None:
    from .conftest import free_port

    locker = Locker(f"redis://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendError):
            async with locker.lock(key):
                pass
    finally:
        await locker.aclose()


async def test_a_value_relock_did_not_write_is_never_overwritten(
    locker: Locker, sync_client: "redis.Redis[bytes]", key: str
) -> None:
    sync_client.set(f"relock:{{{key}}}", "someone else's", px=5000)
    assert await locker.try_lock(key) is None
    with pytest.raises(BackendError, match="did not write"):
        await locker.inspect(key)
    assert sync_client.get(f"relock:{{{key}}}") == b"someone else's"


class Order:
    def __init__(self, id: int) -> None:
        self.id = id


async def test_locked_builds_the_key_from_the_parameters(locker: Locker, key: str) -> None:
    seen = []

    @locked(key + ":order:{order.id}:{step}", locker=locker)
    async def pay(order: Order, step: str = "pay") -> int:
        guard = current_guard()
        assert guard is not None
        seen.append(guard.key)
        return await pay_again(order)

    @locked(key + ":order:{order.id}:pay", locker=locker)
    async def pay_again(order: Order) -> int:
        guard = current_guard()
        assert guard is not None and guard.is_reentrant
        return order.id

    assert await pay(Order(7)) == 7
    assert seen == [f"{key}:order:7:pay"]


async def test_locked_finds_the_locker_on_self(locker: Locker, key: str) -> None:
    class Service:
        def __init__(self, locker: Locker) -> None:
            self.locker = locker

        @locked(key + ":user:{user_id}", locker="self.locker")
        async def handle(self, user_id: int) -> str:
            info = await self.locker.inspect(f"{key}:user:{user_id}")
            assert info is not None
            return "ok"

    assert await Service(locker).handle(3) == "ok"


def test_locked_refuses_unknown_placeholders_and_plain_functions() -> None:
    with pytest.raises(ValueError, match="names no parameter"):
        @locked("order:{missing}")
        async def f(order_id: int) -> None: ...

    with pytest.raises(TypeError, match="async def"):
        @locked("order:{order_id}")
        def g(order_id: int) -> None: ...


async def test_a_hold_is_lost_by_its_local_deadline_while_redis_does_not_answer(
    locker: Locker, key: str, sync_client: "redis.Redis"
) -> None:
    guard = await locker.lock(key, lease=0.3)
    acquired = time.monotonic()
    sync_client.execute_command("CLIENT", "PAUSE", 1000, "ALL")
    await asyncio.wait_for(guard.lost.wait(), 2)
    lost_after = time.monotonic() - acquired
    assert not guard.is_held
    # By the local deadline (lease less the drift margin), not when the server answers again.
    assert 0.25 < lost_after < 0.5, lost_after
    await asyncio.sleep(1.0)  # the pause ends
    with pytest.raises(Lost):
        await guard.release()


async def test_run_closes_a_body_it_never_started(
    locker: Locker, client: "redis.asyncio.Redis", key: str
) -> None:
    other = Locker(client)
    try:
        async with other.lock(key):
            async def body() -> None:
                raise AssertionError("never runs")

            coroutine = body()
            with pytest.raises(Timeout):
                await locker.run(key, coroutine, wait=0.05)
            assert coroutine.cr_frame is None  # closed
    finally:
        await other.aclose()


async def test_many_waiters_on_a_few_keys_exclude_each_other_and_all_finish(
    locker: Locker, key: str
) -> None:
    inside: dict[str, int] = {}
    overlaps = 0

    async def worker(n: int) -> None:
        nonlocal overlaps
        for i in range(15):
            k = f"{key}:{(n + i) % 3}"
            async with locker.lock(k, wait=20):
                inside[k] = inside.get(k, 0) + 1
                overlaps += inside[k] > 1
                await asyncio.sleep(0.001 * (i % 3))
                inside[k] -= 1

    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(8))), 30)
    assert overlaps == 0


async def test_waiters_survive_the_loss_of_the_subscriber_connection(
    locker: Locker, client: "redis.asyncio.Redis", key: str, sync_client: "redis.Redis"
) -> None:
    other = Locker(client)
    try:
        guard = await other.lock(key, lease=30)
        waiter = asyncio.create_task(locker.lock(key, wait=10)._acquire())
        await asyncio.sleep(0.2)
        assert sync_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        await asyncio.sleep(0.2)  # the waiter woke, was refused, and subscribed again
        released = time.monotonic()
        await guard.release()
        got = await waiter
        assert time.monotonic() - released < 0.2
        await got.release()
    finally:
        await other.aclose()


async def test_locked_uses_the_global_locker_and_says_when_there_is_none(
    locker: Locker, key: str
) -> None:
    from relock_redis import NoLocker, locker as locker_module, set_global

    @locked(key + ":{n}")
    async def work(n: int) -> str:
        guard = current_guard()
        assert guard is not None
        return guard.key

    saved = list(locker_module._GLOBAL)
    try:
        locker_module._GLOBAL.clear()
        with pytest.raises(NoLocker):
            await work(1)
        set_global(locker)
        assert await work(1) == f"{key}:1"
    finally:
        locker_module._GLOBAL[:] = saved


async def test_re_entering_a_lost_hold_raises_lost(
    locker: Locker, client: "redis.asyncio.Redis", key: str
) -> None:
    operator = Locker(client)
    try:
        async with locker.lock(key, lease=0.3, on_lost="continue") as guard:
            await operator.force_release(key)
            await asyncio.wait_for(guard.lost.wait(), 2)
            with pytest.raises(Lost):
                async with locker.lock(key):
                    pass
            with pytest.raises(Lost):
                await guard.release()
    finally:
        await operator.aclose()


async def test_inspect_shows_readers_and_permits_the_rust_crate_holds(
    locker: Locker, key: str, sync_client: "redis.Redis[bytes]"
) -> None:
    # Two readers, as the Rust crate's `read` takes them (acquire_shared.lua, permits 0), under
    # a writer's last fencing token 4242; then a semaphore of 3 with one permit on another key.
    source = (REPO_SCRIPTS / "acquire_shared.lua").read_text()
    lock = f"relock:{{{key}}}"
    sync_client.set(lock, "-4242 " + "0" * 32, px=600_000)
    readers = ["a" * 32, "b" * 32]
    for token in readers:
        assert sync_client.eval(source, 1, lock, token, 30_000, 600_000, 0) == [1, 4242]
    info = await locker.inspect(key)
    assert info is not None
    assert (info.mode, info.permits, info.holds, info.owner) == ("read", None, 2, readers[0])
    assert info.fencing_token == 4242 and 25 < info.ttl <= 30
    assert info.pid is None and info.host is None
    assert await locker.try_lock(key) is None, "readers hold it for this package too"

    permits = f"relock:{{{key}:permits}}"
    status, fence = sync_client.eval(source, 1, permits, "c" * 32, 30_000, 600_000, 3)
    assert status == 1
    info = await locker.inspect(f"{key}:permits")
    assert info is not None
    assert (info.mode, info.permits, info.holds, info.fencing_token) == ("permits", 3, 1, fence)
