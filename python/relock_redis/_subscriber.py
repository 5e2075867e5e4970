"""Release notifications: one subscriber connection per locker, waiters on one key coalesced.

A waiter subscribes to the lock's release channel and waits until the subscription is
*confirmed* before it tries again (a release announced earlier would be missed otherwise); from
then on it arms its wake-up (:meth:`Subscription.arm`) *before* each try, so a release between
a try and the sleep is never missed.

The connection is owned by one task that sends ``SUBSCRIBE``/``UNSUBSCRIBE`` in the order they
were asked for and reads every reply. The server acknowledges each command for one channel with
one reply, in order, so the n-th command sent is confirmed by the n-th acknowledgement: a
subscription is confirmed by counting, even when the same channel is unsubscribed and subscribed
again while replies are in flight. If the connection fails, every waiter is woken (it tries
again, and subscribes afresh if it must keep waiting).
"""

from __future__ import annotations

import asyncio
import collections
import math
from typing import Any, Deque

from redis.asyncio import Redis


class _Channel:
    __slots__ = ("name", "refs", "seq", "confirmed", "wake", "dead")

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.refs = 1
        self.seq = 0
        self.confirmed: asyncio.Future[None] = loop.create_future()
        self.wake: asyncio.Future[None] = loop.create_future()
        self.dead = False

    def notify(self, loop: asyncio.AbstractEventLoop) -> None:
        wake, self.wake = self.wake, loop.create_future()
        if not wake.done():
            wake.set_result(None)

    def kill(self) -> None:
        self.dead = True
        for future in (self.confirmed, self.wake):
            if not future.done():
                future.set_result(None)


class Subscription:
    """One waiter's share of a channel's subscription."""

    __slots__ = ("_subscriber", "_channel", "_closed")

    def __init__(self, subscriber: "Subscriber", channel: _Channel) -> None:
        self._subscriber = subscriber
        self._channel = channel
        self._closed = False

    async def confirmed(self, timeout: float) -> bool:
        """Waits until the server confirmed the subscription; False if it did not within
        ``timeout`` seconds or the connection failed."""
        channel = self._channel
        if not channel.confirmed.done():
            await asyncio.wait((channel.confirmed,), timeout=max(timeout, 0))
        return channel.confirmed.done() and not channel.dead

    @property
    def alive(self) -> bool:
        return not self._channel.dead

    def arm(self) -> "asyncio.Future[None]":
        """The wake-up for the next sleep; take it before the attempt it follows."""
        return self._channel.wake

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._subscriber._unsubscribe(self._channel)


class Subscriber:
    """The locker's subscriber connection, opened on first use."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._channels: dict[str, _Channel] = {}
        self._outbox: Deque[tuple[str, str]] = collections.deque()
        # Channels whose SUBSCRIBE is not acknowledged yet, in the order sent.
        self._unconfirmed: Deque[_Channel] = collections.deque()
        self._sent = 0
        self._acknowledged = 0
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, name: str) -> Subscription:
        """Subscribes to ``name`` (or shares the subscription another waiter has)."""
        channel = self._channels.get(name)
        if channel is not None and not channel.dead:
            channel.refs += 1
            return Subscription(self, channel)
        channel = _Channel(name, asyncio.get_running_loop())
        self._channels[name] = channel
        channel.seq = self._send("SUBSCRIBE", name)
        self._unconfirmed.append(channel)
        return Subscription(self, channel)

    def _unsubscribe(self, channel: _Channel) -> None:
        channel.refs -= 1
        if channel.refs > 0 or channel.dead or self._channels.get(channel.name) is not channel:
            return
        del self._channels[channel.name]
        self._send("UNSUBSCRIBE", channel.name)

    def _send(self, command: str, name: str) -> int:
        self._sent += 1
        self._outbox.append((command, name))
        self._kick.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="relock-subscriber")
        return self._sent

    async def _run(self) -> None:
        connection = self._redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        reader: asyncio.Task[None] | None = None
        try:
            await connection.connect()
            reader = asyncio.get_running_loop().create_task(self._read(connection))
            while True:
                while self._outbox:
                    command, name = self._outbox[0]
                    await connection.send_command(command, name)
                    self._outbox.popleft()
                self._kick.clear()
                if reader.done():
                    break
                kick = asyncio.ensure_future(self._kick.wait())
                await asyncio.wait((kick, reader), return_when=asyncio.FIRST_COMPLETED)
                kick.cancel()
                if reader.done():
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            pass
        finally:
            if reader is not None:
                reader.cancel()
            self._fail_all()
            try:
                await connection.disconnect()
            except Exception:
                pass

    async def _read(self, connection: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                # Blocks without the socket timeout (math.inf); replies of a subscribed
                # connection are read as pushes.
                reply = await connection.read_response(
                    timeout=math.inf, disconnect_on_error=False, push_request=True
                )
                if not isinstance(reply, list) or len(reply) < 3:
                    continue
                kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
                name = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
                if kind == "message":
                    channel = self._channels.get(name)
                    if channel is not None:
                        channel.notify(loop)
                elif kind in ("subscribe", "unsubscribe"):
                    self._acknowledged += 1
                    while self._unconfirmed and self._unconfirmed[0].seq <= self._acknowledged:
                        confirmed = self._unconfirmed.popleft().confirmed
                        if not confirmed.done():
                            confirmed.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception:
            return

    def _fail_all(self) -> None:
        """The connection failed: wake every waiter; the next subscription starts afresh."""
        for channel in self._channels.values():
            channel.kill()
        for channel in self._unconfirmed:
            channel.kill()
        self._channels.clear()
        self._unconfirmed.clear()
        self._outbox.clear()
        self._sent = self._acknowledged = 0
        self._task = None

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except BaseException:
                pass
        self._fail_all()
