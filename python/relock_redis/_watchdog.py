"""The lease watchdog: one task per locker renews every due hold in one pipeline per tick, and
declares a hold lost when its local deadline passes without a confirmed renewal."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from . import _protocol as protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ._lease import Hold


class Watchdog:
    def __init__(self, redis: Redis, retention: float) -> None:
        self._redis = redis
        self._retention = retention
        self.holds: set["Hold"] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._next = math.inf

    def register(self, hold: "Hold") -> None:
        self.holds.add(hold)
        if self._task is None or self._task.done():
            self._next = hold.renew_at
            self._task = asyncio.get_running_loop().create_task(self._run(), name="relock-watchdog")
        elif hold.renew_at < self._next:
            self._wake.set()

    def unregister(self, hold: "Hold") -> None:
        self.holds.discard(hold)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.holds:
                self._next = math.inf
                self._wake.clear()
                await self._wake.wait()
                continue
            now = loop.time()
            for hold in [hold for hold in self.holds if now >= hold.deadline or hold.is_lost]:
                self.holds.discard(hold)
                hold.lose()
            # Renewing up to lease/6 early lets holds taken at nearby moments share a round trip
            # (as the Rust crate's watchdog does).
            due = [hold for hold in self.holds if hold.renew_at <= now + hold.lease / 6]
            if due:
                await self._renew(due, loop)
                continue
            if not self.holds:
                continue
            self._next = min(min(h.renew_at for h in self.holds), min(h.deadline for h in self.holds))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(self._next - now, 0))
            except asyncio.TimeoutError:
                pass

    async def _renew(self, due: list["Hold"], loop: asyncio.AbstractEventLoop) -> None:
        """One pipeline for every due hold, bounded by the earliest of their local deadlines."""
        sent = loop.time()
        limit = max(min(hold.deadline for hold in due) - sent, 0.001)
        try:
            replies = await asyncio.wait_for(self._send(due), timeout=limit)
        except Exception:
            replies = None
        for index, hold in enumerate(due):
            reply = replies[index] if replies is not None else None
            if hold.released or hold not in self.holds:
                continue
            if reply == 1:
                hold.renewed(sent)
            elif reply == 0:
                # The server no longer has it: released elsewhere, force-released, or expired.
                self.holds.discard(hold)
                hold.lose()
            else:
                # Unknown: try again soon; the local deadline bounds how long that may go on.
                hold.renew_at = loop.time() + min(max(hold.lease / 10, 0.005), 0.5)

    async def _send(self, due: list["Hold"]) -> list[Any]:
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for hold in due:
                pipe.evalsha(
                    protocol.RENEW.sha,
                    1,
                    hold.name,
                    hold.token,
                    protocol.millis(hold.lease),
                    protocol.millis(max(self._retention, hold.lease)),
                )
            replies = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(reply, NoScriptError) for reply in replies):
                # NOSCRIPT ran nothing: load the script and send the pipeline again.
                await self._redis.script_load(protocol.RENEW.source)
                continue
            return list(replies)
        return list(replies)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except BaseException:
                pass
