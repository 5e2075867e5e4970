"""Reentrant distributed locks on Redis for asyncio, sharing locks with the Rust ``relock`` crate.

::

    from relock_redis import Locker

    locker = Locker("redis://127.0.0.1:6379")
    async with locker.lock("order:42", wait=2, lease=10) as guard:
        await store.write(value, fencing_token=guard.fencing_token)

The Redis layout and the Lua scripts are the protocol of ``relock/src/scripts/README.md``: Rust
and Python processes exclude each other on one lock, and their fencing tokens interleave in one
increasing order.
"""

from ._key import MAX_LEN, validate_key
from ._lease import MAX_LEASE, MIN_LEASE
from ._protocol import LockInfo
from .decorator import NoLocker, locked
from .errors import (
    BackendError,
    InvalidKey,
    InvalidLease,
    Lost,
    RelockError,
    Timeout,
    WouldDeadlock,
)
from .locker import Acquire, LockGuard, Locker, current_guard, set_global

__all__ = [
    "Acquire",
    "BackendError",
    "InvalidKey",
    "InvalidLease",
    "LockGuard",
    "LockInfo",
    "Locker",
    "Lost",
    "MAX_LEASE",
    "MAX_LEN",
    "MIN_LEASE",
    "NoLocker",
    "RelockError",
    "Timeout",
    "WouldDeadlock",
    "current_guard",
    "locked",
    "set_global",
    "validate_key",
]
