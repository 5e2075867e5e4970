"""The locker, lock requests, guards and ownership scopes."""

from __future__ import annotations

import asyncio
import contextvars
import random
import types
from datetime import timedelta
from typing import Any, Awaitable, Coroutine, Generator, Literal, TypeVar

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from . import _protocol as protocol
from ._key import validate_key
from ._lease import MAX_LEASE, MIN_LEASE, Hold
from ._protocol import LockInfo
from ._subscriber import Subscriber, Subscription
from ._watchdog import Watchdog
from .errors import BackendError, InvalidLease, Lost, Timeout, WouldDeadlock

T = TypeVar("T")
Seconds = float | int | timedelta
OnLost = Literal["cancel", "continue"]


def _seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class _Node:
    """One frame of a task's scope: a hold, and the frames it is nested in (a persistent list,
    so a child task that copied the context shares the tail)."""

    __slots__ = ("hold", "parent")

    def __init__(self, hold: Hold, parent: "_Node | None") -> None:
        self.hold = hold
        self.parent = parent


# The holds the current task runs under. Tasks created inside a scope copy the context, and so
# share the scope's holds, as the Rust crate's `task_local!` frame is shared by nested futures.
_SCOPE: contextvars.ContextVar[_Node | None] = contextvars.ContextVar("relock_scope", default=None)
_GLOBAL: list["Locker"] = []


def set_global(locker: "Locker") -> None:
    """Makes ``locker`` the default that ``@locked`` uses when neither an explicit locker nor
    the current scope names one."""
    _GLOBAL[:] = [locker]


def current_guard() -> "LockGuard | None":
    """A re-entrant guard on the innermost lock the current scope holds, if any."""
    node = _SCOPE.get()
    while node is not None:
        if not node.hold.released:
            return LockGuard(node.hold, reentrant=True)
        node = node.parent
    return None


def _scope_locker() -> "Locker | None":
    node = _SCOPE.get()
    return node.hold.locker if node is not None else None


def _global_locker() -> "Locker | None":
    return _GLOBAL[0] if _GLOBAL else None


class _Scope:
    """One ``async with`` over a guard: the frame it pushed, and the task it may cancel when
    the hold is lost."""

    __slots__ = ("hold", "task", "on_lost", "token", "cancelling", "cancelled", "driven")

    def __init__(self, hold: Hold, on_lost: OnLost) -> None:
        self.hold = hold
        self.task = asyncio.current_task()
        self.on_lost = on_lost
        self.token: contextvars.Token[_Node | None] | None = None
        self.cancelling = self.task.cancelling() if self.task is not None else 0
        self.cancelled = False
        # Driven by `Locker.run`, which checks the hold itself before every step of the body.
        self.driven = False

    def on_loss(self) -> None:
        task = self.task
        if self.on_lost != "cancel" or task is None or task.done() or self.cancelled:
            return
        if self.driven and task is asyncio.current_task():
            return
        self.cancelled = True
        task.cancel(f"relock: lock `{self.hold.key}` lost")


class LockGuard:
    """A held lock.

    Use it as ``async with`` to run a block under it (nested locks on the same key then
    re-enter), or call :meth:`release` yourself. A guard from ``async with locker.lock(...)``
    is already entered.
    """

    __slots__ = ("_hold", "_reentrant", "_scope", "__weakref__")

    def __init__(self, hold: Hold, reentrant: bool) -> None:
        self._hold = hold
        self._reentrant = reentrant
        self._scope: _Scope | None = None

    @property
    def key(self) -> str:
        """The key this guard holds."""
        return self._hold.key

    @property
    def fencing_token(self) -> int:
        """Strictly increasing per key for every fresh acquisition, across owners, processes
        and languages. Pass it to the resource you write to, so that it can reject a write from
        a holder whose lease has ended. A re-entrant guard carries the outer hold's token."""
        return self._hold.fencing_token

    @property
    def lease(self) -> float:
        """The lease this hold was taken with, in seconds."""
        return self._hold.lease

    @property
    def is_held(self) -> bool:
        """Whether the lease is still in force, by the local deadline; never a round trip."""
        return self._hold.check()

    @property
    def is_reentrant(self) -> bool:
        """Whether this guard re-entered a hold that its scope already had."""
        return self._reentrant

    @property
    def lost(self) -> asyncio.Event:
        """Set when the hold is lost (its local deadline passed without a confirmed renewal, or
        the server no longer had it), and once it is released, so a task waiting on it never
        waits for ever."""
        if not self._hold.is_lost:
            self._hold.check()
        return self._hold.lost

    async def release(self) -> None:
        """Releases the lock. A re-entrant guard only lets go of its share: the guard that took
        the hold releases it.

        Raises :class:`Lost` if the lease had ended (another holder's lock is never touched),
        :class:`BackendError` if the server could not be reached (the release is then retried
        in the background until the server answers or the lease has ended there).
        """
        hold = self._hold
        if self._reentrant:
            if not hold.released and not hold.check():
                raise Lost(hold.key)
            return
        if hold.released:
            return
        await hold.locker._release(hold)

    def _enter(self, on_lost: OnLost) -> "LockGuard":
        if self._scope is not None:
            raise RuntimeError("this guard is already entered")
        hold = self._hold
        scope = _Scope(hold, on_lost)
        if not self._reentrant:
            hold.scoped = True
            scope.token = _SCOPE.set(_Node(hold, _SCOPE.get()))
        hold.scopes.append(scope)
        self._scope = scope
        return self

    async def __aenter__(self) -> "LockGuard":
        return self._enter("cancel")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool:
        scope, self._scope = self._scope, None
        if scope is None:
            return False
        hold = self._hold
        if scope.token is not None:
            try:
                _SCOPE.reset(scope.token)
            except ValueError:
                # Left in another context than it was entered in: drop the frame by hand.
                node = _SCOPE.get()
                _SCOPE.set(node.parent if node is not None and node.hold is hold else node)
        try:
            hold.scopes.remove(scope)
        except ValueError:
            pass
        ours = False
        if scope.cancelled and scope.task is not None:
            # Our cancellation, unless someone else cancelled the task as well.
            ours = scope.task.uncancel() <= scope.cancelling
        if self._reentrant:
            if ours and (exc_type is None or issubclass(exc_type, asyncio.CancelledError)):
                raise Lost(hold.key) from exc
            return False
        locker = hold.locker
        if hold.released:
            # Released inside the block.
            return False
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and not ours:
            # Cancelled from outside: let the cancellation through, release in the background.
            locker._release_soon(hold)
            return False
        if ours or not hold.check():
            locker._release_soon(hold)
            if exc_type is None or ours and issubclass(exc_type, asyncio.CancelledError):
                raise Lost(hold.key) from exc
            return False
        if exc_type is None:
            await locker._release(hold)
            return False
        # The body failed: its exception is the one to see; a release that fails is retried in
        # the background.
        try:
            await locker._release(hold)
        except (Lost, BackendError):
            pass
        return False

    def __del__(self) -> None:
        # A fresh guard dropped without a release (and outside `async with`): hand the release
        # to the background rather than leave the lock held for the rest of its lease.
        try:
            hold = self._hold
        except AttributeError:
            return
        if not self._reentrant and not hold.released and hold.scopes == []:
            try:
                hold.locker._release_soon(hold)
            except Exception:
                pass

    def __repr__(self) -> str:
        return (
            f"LockGuard(key={self.key!r}, fencing_token={self.fencing_token}, "
            f"reentrant={self._reentrant}, held={self.is_held})"
        )


class Acquire:
    """A lock request: ``async with`` it to run a block under the lock, or ``await`` it for a
    :class:`LockGuard` that you release yourself.

    Created by :meth:`Locker.lock`.
    """

    __slots__ = ("_locker", "_key", "_wait", "_lease", "_on_lost", "_guard")

    def __init__(
        self, locker: "Locker", key: str, wait: float | None, lease: float | None, on_lost: OnLost
    ) -> None:
        self._locker = locker
        self._key = key
        self._wait = wait
        self._lease = lease
        self._on_lost = on_lost
        self._guard: LockGuard | None = None

    def __await__(self) -> Generator[Any, None, LockGuard]:
        return self._acquire().__await__()

    async def _acquire(self) -> LockGuard:
        guard = await self._locker._acquire(self._key, self._wait, self._lease, try_only=False)
        assert guard is not None
        return guard

    async def __aenter__(self) -> LockGuard:
        guard = await self._locker._acquire(self._key, self._wait, self._lease, try_only=False)
        assert guard is not None
        self._guard = guard
        return guard._enter(self._on_lost)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool:
        guard, self._guard = self._guard, None
        if guard is None:
            return False
        return await guard.__aexit__(exc_type, exc, tb)


class _Entered:
    """Leaves an already entered :class:`Acquire` at the end of an ``async with``."""

    __slots__ = ("_acquire",)

    def __init__(self, acquire: Acquire) -> None:
        self._acquire = acquire

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool:
        return await self._acquire.__aexit__(exc_type, exc, tb)


class _Checked:
    """Drives a coroutine, checking the hold before every step: a task that stalled past its
    lease (a blocking call, a paused process) never takes another step of the body when it
    wakes. The body is then cancelled, and :class:`Lost` raised."""

    __slots__ = ("_coro", "_hold")

    def __init__(self, coro: Coroutine[Any, Any, T], hold: Hold) -> None:
        self._coro = coro
        self._hold = hold

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, hold = self._coro, self._hold
        value: Any = None
        error: BaseException | None = None
        aborted = False
        while True:
            if not aborted and not hold.check():
                aborted = True
                error = asyncio.CancelledError(f"relock: lock `{hold.key}` lost")
            try:
                if error is None:
                    yielded = coro.send(value)
                else:
                    thrown, error = error, None
                    yielded = coro.throw(thrown)
            except StopIteration as stop:
                if aborted:
                    raise Lost(hold.key) from None
                return stop.value
            except BaseException as failure:
                if aborted:
                    raise Lost(hold.key) from failure
                raise
            try:
                value = yield yielded
            except BaseException as thrown:
                value, error = None, thrown


class Locker:
    """Takes reentrant distributed locks on one Redis server.

    ``redis`` is a ``redis.asyncio.Redis`` client (RESP2, the default) or a URL. ``prefix``
    names the keys (``<prefix>:{<key>}``; every client sharing locks must share it), ``lease``
    is how long a lock stays held if its process stops renewing it, ``wait`` how long
    :meth:`lock` waits for another holder by default, ``retention`` how long a lock's key (its
    last fencing token) is kept after its last grant or renewal. Durations are seconds or
    ``timedelta``.

    One locker runs one renewal task and one subscriber connection; share it across the
    application and close it with :meth:`aclose` (or ``async with``).
    """

    def __init__(
        self,
        redis: "Redis | str",
        *,
        prefix: str = "relock",
        lease: Seconds = 30.0,
        wait: Seconds = 10.0,
        retention: Seconds = 600.0,
    ) -> None:
        self._owns_client = isinstance(redis, str)
        self.redis: Redis = Redis.from_url(redis) if isinstance(redis, str) else redis
        self.prefix = prefix
        self.lease = _check_lease(_seconds(lease))
        self.wait = _seconds(wait)
        self.retention = max(_seconds(retention), self.lease)
        self._retention_ms = protocol.millis(self.retention)
        self._lease_args = (protocol.millis(self.lease), self._retention_ms)
        self._watchdog: Watchdog | None = None
        self._subscriber: Subscriber | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- the API ---------------------------------------------------------------------------

    def lock(
        self,
        key: str,
        *,
        wait: Seconds | None = None,
        lease: Seconds | None = None,
        on_lost: OnLost = "cancel",
    ) -> Acquire:
        """A request for ``key``: ``async with locker.lock(key) as guard:`` runs the block under
        the lock (waiting up to ``wait`` for another holder), ``await locker.lock(key)`` returns
        a guard to release yourself.

        Inside the block, locking the same key again re-enters at once, without a round trip,
        in this task and in tasks created inside the block. When the hold is lost mid-block,
        ``on_lost="cancel"`` (the default) cancels the block at its next ``await`` and raises
        :class:`Lost`; ``"continue"`` lets it run (``guard.lost`` is set, ``guard.is_held`` is
        False, and leaving the block raises :class:`Lost`).
        """
        return Acquire(
            self,
            key,
            None if wait is None else _seconds(wait),
            None if lease is None else _seconds(lease),
            on_lost,
        )

    async def try_lock(self, key: str, *, lease: Seconds | None = None) -> LockGuard | None:
        """Takes the lock if it is free (or re-enters it if the scope holds it); never waits.
        Returns ``None`` when another owner holds it."""
        return await self._acquire(key, 0.0, None if lease is None else _seconds(lease), True)

    async def run(
        self,
        key: str,
        body: Awaitable[T],
        *,
        wait: Seconds | None = None,
        lease: Seconds | None = None,
    ) -> T:
        """Runs the coroutine ``body`` under the lock and returns its result.

        Like ``async with locker.lock(key):``, and stricter on loss: the hold is checked
        before every step of ``body``, so a task that stalled past its lease (a blocking call,
        a paused process) never takes another step; ``body`` is cancelled and :class:`Lost`
        raised.
        """
        try:
            acquired = self.lock(key, wait=wait, lease=lease)
            guard = await acquired.__aenter__()
        except BaseException:
            # Never started: close it, so it is not reported as never awaited.
            if isinstance(body, Coroutine):
                body.close()
            raise
        async with _Entered(acquired):
            scope = guard._scope
            if not isinstance(body, Coroutine):
                return await body
            if scope is not None:
                scope.driven = True
            return await _Checked(body, guard._hold)  # type: ignore[no-any-return]
        raise AssertionError("unreachable")  # pragma: no cover

    async def inspect(self, key: str) -> LockInfo | None:
        """Reads who holds ``key``, for how much longer and under which fencing token; ``None``
        when it is free."""
        key = validate_key(key)
        reply = await self._call(protocol.INSPECT, [protocol.lock_key(self.prefix, key)], [])
        return protocol.parse_inspect(self.prefix, key, reply)

    async def force_release(self, key: str) -> bool:
        """Frees ``key`` whoever holds it and wakes its waiters (an operator's tool: the holder
        finds its lock lost). Returns whether a holder was removed."""
        key = validate_key(key)
        reply = await self._call(
            protocol.FORCE_RELEASE,
            [protocol.lock_key(self.prefix, key), protocol.channel(self.prefix, key)],
            [],
        )
        if not (isinstance(reply, list) and len(reply) == 2 and reply[1] >= 0):
            raise protocol.unexpected("force-release", reply)
        removed, last = reply
        if self._watchdog is not None:
            for hold in list(self._watchdog.holds):
                if hold.key == key and hold.fencing_token <= last:
                    self._watchdog.unregister(hold)
                    hold.lose()
        return bool(removed == 1)

    async def aclose(self, grace: float = 2.0) -> None:
        """Stops the renewal task and the subscriber (holds still held are then left to their
        leases), gives background releases up to ``grace`` seconds to be answered, and closes
        the client if the locker made it."""
        if self._background:
            pending = set(self._background)
            await asyncio.wait(pending, timeout=grace)
            for task in pending:
                task.cancel()
        if self._watchdog is not None:
            await self._watchdog.aclose()
        if self._subscriber is not None:
            await self._subscriber.aclose()
        if self._owns_client:
            await self.redis.aclose()

    async def __aenter__(self) -> "Locker":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Locker(prefix={self.prefix!r}, lease={self.lease}, wait={self.wait})"

    # -- acquisition -----------------------------------------------------------------------

    async def _acquire(
        self, key: str, wait: float | None, lease: float | None, try_only: bool
    ) -> LockGuard | None:
        key = validate_key(key)
        node = _SCOPE.get()
        while node is not None:
            hold = node.hold
            if hold.key == key and hold.locker is self and not hold.released:
                if not hold.check():
                    raise Lost(key)
                return LockGuard(hold, reentrant=True)
            node = node.parent
        lease = self.lease if lease is None else _check_lease(lease)
        wait = 0.0 if try_only else (self.wait if wait is None else max(wait, 0.0))
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + wait
        name = protocol.lock_key(self.prefix, key)
        # The hold's identity at the server for every attempt of this request: a retried
        # attempt that the server already granted gets the same grant back.
        token = protocol.new_hold_token()
        if lease == self.lease:
            args = (token, *self._lease_args)
        else:
            args = (token, protocol.millis(lease), protocol.millis(max(self.retention, lease)))
        subscription: Subscription | None = None
        backoff = 0.002
        try:
            while True:
                armed = subscription.arm() if subscription is not None else None
                sent = loop.time()
                try:
                    try:
                        reply = await self.redis.evalsha(
                            protocol.ACQUIRE.sha, 1, name, *args, protocol.holder_metadata()
                        )
                    except NoScriptError:
                        # NOSCRIPT ran nothing: load the script and send again.
                        reply = await protocol.ACQUIRE.run(
                            self.redis, (name,), (*args, protocol.holder_metadata())
                        )
                except ResponseError as err:
                    raise BackendError(f"acquiring `{key}`: {err}") from err
                except BaseException as err:
                    # Cancelled, or no answer (a timeout, a dropped connection): the lock may
                    # have been granted to this token. Release it in the background.
                    self._release_in_background(name, key, token, 0, sent + 2 * lease)
                    if isinstance(err, (RedisError, OSError)):
                        raise BackendError(f"acquiring `{key}`: {err}") from err
                    raise
                if not (isinstance(reply, list) and len(reply) == 2):
                    raise protocol.unexpected("acquire", reply)
                status, value = reply
                if status == 1:
                    hold = Hold(self, key, name, token, int(value), lease, sent, loop.time)
                    if not hold.check():
                        # The reply was read only after the lease had ended (the process
                        # stalled): another owner may hold the key by now.
                        self._release_in_background(name, key, token, hold.fencing_token, sent + 2 * lease)
                        raise Lost(key)
                    self._watchdog_for().register(hold)
                    return LockGuard(hold, reentrant=False)
                if status == 2:
                    raise BackendError(
                        f"the acquisition of `{key}` reached the server after its own release; "
                        "nothing is held"
                    )
                if status != 0:
                    raise protocol.unexpected("acquire", reply)
                if try_only:
                    return None
                ttl = value / 1000 if isinstance(value, int) and value >= 0 else None
                now = loop.time()
                if now >= deadline:
                    raise self._timeout(key, now - started, ttl)
                if subscription is None or not subscription.alive:
                    # Subscribe, wait for the confirmation, then try again at once: a release
                    # announced before the subscription would be missed otherwise.
                    if subscription is not None:
                        subscription.close()
                    subscription = self._subscriber_for().subscribe(
                        protocol.channel(self.prefix, key)
                    )
                    if await subscription.confirmed(deadline - now):
                        continue
                    if loop.time() >= deadline:
                        raise self._timeout(key, loop.time() - started, ttl)
                    # No subscription (the connection failed): back off instead.
                    subscription.close()
                    subscription = None
                if subscription is not None and armed is not None:
                    until = deadline if ttl is None else min(deadline, now + ttl)
                    if not armed.done():
                        await asyncio.wait((armed,), timeout=max(until - now, 0))
                else:
                    delay = min(backoff * random.uniform(0.5, 1.0), deadline - now)
                    if ttl is not None:
                        delay = min(delay, ttl)
                    backoff = min(backoff * 2, 0.05)
                    await asyncio.sleep(max(delay, 0))
        finally:
            if subscription is not None:
                subscription.close()

    def _timeout(self, key: str, waited: float, ttl: float | None) -> Exception:
        current = asyncio.current_task()
        if self._watchdog is not None and any(
            hold.key == key and hold.task is current and not hold.scoped and not hold.is_lost
            for hold in self._watchdog.holds
        ):
            return WouldDeadlock(key)
        return Timeout(key, waited, ttl)

    # -- release ---------------------------------------------------------------------------

    async def _release(self, hold: Hold) -> None:
        if hold.released:
            return
        lost = not hold.check()
        hold.end()
        if self._watchdog is not None:
            self._watchdog.unregister(hold)
        channel = protocol.channel(self.prefix, hold.key)
        try:
            try:
                reply = await self.redis.evalsha(
                    protocol.RELEASE.sha, 2, hold.name, channel,
                    hold.token, hold.fencing_token, self._retention_ms,
                )
            except NoScriptError:
                reply = await protocol.RELEASE.run(
                    self.redis,
                    (hold.name, channel),
                    (hold.token, hold.fencing_token, self._retention_ms),
                )
        except ResponseError as err:
            raise BackendError(f"releasing `{hold.key}`: {err}") from err
        except BaseException as err:
            self._release_in_background(
                hold.name, hold.key, hold.token, hold.fencing_token,
                asyncio.get_running_loop().time() + 2 * hold.lease,
            )
            if isinstance(err, (RedisError, OSError)):
                raise BackendError(f"releasing `{hold.key}`: {err}") from err
            raise
        # 2: released already (a retry found its own tombstone).
        if reply in (1, 2) and not lost:
            return
        if reply in (0, 1, 2):
            raise Lost(hold.key)
        raise protocol.unexpected("release", reply)

    def _release_soon(self, hold: Hold) -> None:
        """Releases ``hold`` in the background (cancelled or lost owners)."""
        if hold.released:
            return
        hold.end()
        if self._watchdog is not None:
            self._watchdog.unregister(hold)
        loop = asyncio.get_running_loop()
        self._release_in_background(
            hold.name, hold.key, hold.token, hold.fencing_token, loop.time() + 2 * hold.lease
        )

    def _release_in_background(
        self, name: str, key: str, token: str, fencing_token: int, until: float
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._release_until_answered(name, key, token, fencing_token, until),
            name="relock-release",
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release_until_answered(
        self, name: str, key: str, token: str, fencing_token: int, until: float
    ) -> None:
        """Sends the release until the server answers (a failed attempt may not have reached
        it), or until the lease has ended there for sure.

        The release of an acquisition whose outcome is unknown (fencing token 0) that did not
        release a grant may have overtaken that acquisition; its tombstone refuses it unless
        another hold came and went meanwhile. So it is sent again every 0.25 s to 2 s until the
        lease would have ended: each repeat names the hold in the tombstone again wherever the
        lock is free, and a grant that slipped through is released within one interval. Only
        releasing an actual grant (answer 1) ends the repeats early."""
        loop = asyncio.get_running_loop()
        reply = await self._release_answered(name, key, token, fencing_token, until)
        if fencing_token != 0 or reply in (None, 1):
            return
        again = 0.25
        while loop.time() + again < until:
            await asyncio.sleep(again)
            again = min(again * 2, 2.0)
            if await self._release_answered(name, key, token, fencing_token, until) == 1:
                return

    async def _release_answered(
        self, name: str, key: str, token: str, fencing_token: int, until: float
    ) -> int | None:
        """One release, retried until the server answers it (its answer), or until ``until``
        (``None``)."""
        loop = asyncio.get_running_loop()
        retry = 0.01
        channel = protocol.channel(self.prefix, key)
        while True:
            try:
                reply = await protocol.RELEASE.run(
                    self.redis, (name, channel), (token, fencing_token, self._retention_ms)
                )
                return int(reply)
            except Exception:
                if loop.time() + retry >= until:
                    return None
                await asyncio.sleep(retry)
                retry = min(retry * 2, 1.0)

    # -- helpers ---------------------------------------------------------------------------

    async def _call(self, script: protocol.Script, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await script.run(self.redis, keys, args)
        except (RedisError, OSError) as err:
            raise BackendError(f"{script.name}: {err}") from err

    def _watchdog_for(self) -> Watchdog:
        if self._watchdog is None:
            self._watchdog = Watchdog(self.redis, self.retention)
        return self._watchdog

    def _subscriber_for(self) -> Subscriber:
        if self._subscriber is None:
            self._subscriber = Subscriber(self.redis)
        return self._subscriber


def _check_lease(lease: float) -> float:
    if not MIN_LEASE <= lease <= MAX_LEASE:
        raise InvalidLease(lease, MIN_LEASE, MAX_LEASE)
    return lease
