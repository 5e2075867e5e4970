"""A hold as this process sees it: its local deadline, loss, and the scopes that run under it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .locker import Locker, _Scope

MIN_LEASE = 0.010
"""The shortest lease, in seconds: a shorter one would be mostly drift margin and round trip."""
MAX_LEASE = 30 * 24 * 3600.0
"""The longest lease, in seconds."""


def drift_margin(lease: float) -> float:
    """How far this machine's clock may run apart from the server's over one lease: 1% of it
    and 2 ms."""
    return lease / 100 + 0.002


class Hold:
    """One fresh acquisition of a key: its own hold token and fencing token."""

    __slots__ = (
        "locker",
        "key",
        "name",
        "token",
        "fencing_token",
        "lease",
        "deadline",
        "renew_at",
        "_lost",
        "is_lost",
        "released",
        "task",
        "scoped",
        "scopes",
        "_time",
    )

    def __init__(
        self,
        locker: "Locker",
        key: str,
        name: str,
        token: str,
        fencing_token: int,
        lease: float,
        sent: float,
        time: Callable[[], float],
    ) -> None:
        self.locker = locker
        self.key = key
        self.name = name
        self.token = token
        self.fencing_token = fencing_token
        self.lease = lease
        # The lease measured from before the request (the server's lease cannot have started
        # earlier), less the drift margin.
        self.deadline = sent + max(lease - drift_margin(lease), 0.0)
        self.renew_at = sent + lease / 3
        # Made on first use: most holds are released without anyone watching for a loss.
        self._lost: asyncio.Event | None = None
        self.is_lost = False
        self.released = False
        self.task = asyncio.current_task()
        self.scoped = False
        self.scopes: list["_Scope"] = []
        self._time = time

    @property
    def lost(self) -> asyncio.Event:
        """Set when the hold is lost, or ended."""
        if self._lost is None:
            self._lost = asyncio.Event()
            if self.is_lost:
                self._lost.set()
        return self._lost

    def check(self) -> bool:
        """Whether the lease is still in force by the local deadline; never a round trip.
        Lost once, lost for good."""
        if self.is_lost:
            return False
        if self._time() >= self.deadline:
            self.lose()
            return False
        return True

    def renewed(self, sent: float) -> None:
        """A renewal sent at ``sent`` succeeded (ignored if the hold was lost meanwhile: a
        renewal that arrives after the local deadline cannot vouch for the time in between)."""
        if self.check():
            self.deadline = max(self.deadline, sent + max(self.lease - drift_margin(self.lease), 0.0))
            self.renew_at = sent + self.lease / 3

    def lose(self) -> None:
        """Latches the loss: ``lost`` is set and the scopes running under the hold are told."""
        if self.is_lost:
            return
        self.is_lost = True
        if self._lost is not None:
            self._lost.set()
        for scope in list(self.scopes):
            scope.on_loss()

    def end(self) -> None:
        """Released by its owner: no longer held, and not a loss."""
        self.released = True
        self.is_lost = True
        if self._lost is not None:
            self._lost.set()
