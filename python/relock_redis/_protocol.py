"""What relock keeps in Redis, and how it asks for it: the one module that knows the layout.

The layout and the scripts are the protocol shared with the Rust crate, documented in
``relock/src/scripts/README.md``. The scripts are the package's byte-for-byte copies of
``relock/src/scripts/*.lua`` (``sync_scripts.py`` copies them; a test fails if they drift).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Sequence

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from .errors import BackendError


@dataclass(frozen=True)
class Script:
    """One of the protocol's Lua scripts, identified by its SHA1."""

    name: str
    source: bytes
    sha: str

    @classmethod
    def load(cls, name: str) -> "Script":
        source = resources.files(__package__).joinpath("scripts", f"{name}.lua").read_bytes()
        return cls(name, source, hashlib.sha1(source).hexdigest())

    async def run(self, redis: Redis, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """``EVALSHA``, then ``SCRIPT LOAD`` and again if the server lacks the script (a
        ``NOSCRIPT`` reply ran nothing, so sending it again is safe)."""
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


ACQUIRE = Script.load("acquire")
RELEASE = Script.load("release")
RENEW = Script.load("renew")
FORCE_RELEASE = Script.load("force_release")
INSPECT = Script.load("inspect")


def lock_key(prefix: str, key: str) -> str:
    """``P:{K}``: the lock's key."""
    return f"{prefix}:{{{key}}}"


def channel(prefix: str, key: str) -> str:
    """``P:{K}:released``: the channel a release of the lock is announced on."""
    return f"{prefix}:{{{key}}}:released"


def millis(seconds: float) -> int:
    """Leases and retentions go to Redis in whole milliseconds, at least one."""
    return max(1, int(seconds * 1000))


def _host_name() -> str:
    # The same source as the Rust crate, so that both name a machine alike.
    try:
        with open("/proc/sys/kernel/hostname", encoding="utf-8") as file:
            name = file.read().strip()
        if name:
            return name
    except OSError:
        pass
    return os.environ.get("HOSTNAME") or os.environ.get("COMPUTERNAME") or socket.gethostname() or "unknown"


HOST = _host_name()
_PID = str(os.getpid())


def _forked() -> None:
    global _PID
    _PID = str(os.getpid())


os.register_at_fork(after_in_child=_forked)


def holder_metadata() -> str:
    """``"<pid> <now in ms> <host>"``: who takes a lock, for ``inspect``."""
    return f"{_PID} {time.time_ns() // 1_000_000} {HOST}"


def new_hold_token() -> str:
    """A fresh hold token: 128 random bits as 32 lowercase hex digits."""
    return os.urandom(16).hex()


def text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def unexpected(script: str, reply: object) -> BackendError:
    return BackendError(f"unexpected reply from the {script} script: {reply!r}")


@dataclass(frozen=True)
class LockInfo:
    """What :meth:`Locker.inspect` reads about a held lock (the Rust crate's ``LockInfo``)."""

    key: str
    """The lock's key, as it was locked (without prefix or hash tag)."""
    owner: str
    """The current hold's own token (32 hex digits): every fresh acquisition has a new one. For
    shared holds, the first holder's."""
    holds: int
    """1 for an exclusive hold (re-entry is decided in the holder's process and never reaches
    Redis); the live readers or permits in use for shared holds."""
    ttl: float
    """How long the lease has left, in seconds."""
    fencing_token: int
    """The fencing token of the current hold; for shared holds, the key's last one."""
    host: str | None
    """The host name of the holder's machine."""
    pid: int | None
    """The holder's process id."""
    acquired_at: datetime | None
    """When the lock was taken, by the holder's clock."""
    mode: str = "exclusive"
    """How the lock is held: ``"exclusive"``, ``"read"`` (readers of the Rust crate's read-write
    lock) or ``"permits"`` (a semaphore's permits): the Rust crate's ``LockMode``."""
    permits: int | None = None
    """For ``"permits"``, the semaphore's size."""


def parse_inspect(prefix: str, key: str, reply: Any) -> LockInfo | None:
    """``{}`` free, ``{ttl ms, hold}`` held, ``{-1, value, pttl}`` a value relock did not write."""
    if not isinstance(reply, list):
        raise unexpected("inspect", reply)
    if not reply:
        return None
    if len(reply) == 3 and reply[0] == -1:
        shown = text(reply[1])[:64]
        pttl = reply[2]
        expires = "never expires" if pttl == -1 else f"expires in {max(pttl, 0) / 1000:.3f}s"
        raise BackendError(
            f"the Redis key `{lock_key(prefix, key)}` holds a value relock did not write "
            f"(`{shown}`); relock treats the lock as held until the key {expires}"
        )
    if len(reply) != 2 or not isinstance(reply[0], int) or reply[0] <= 0:
        raise unexpected("inspect", reply)
    value = text(reply[1])
    if value.startswith("*"):
        return _parse_shared(key, reply[0], value, reply)
    # "<hold token><mark><fencing token> <deadline ms> <pid> <since ms> <host>"
    token, mark, rest = value[:32], value[32:33], value[33:]
    parts = rest.split(" ", 4)
    if len(token) != 32 or mark not in (" ", "+") or len(parts) < 2 or not parts[0].isdigit():
        raise unexpected("inspect", reply)
    pid = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
    since = (
        datetime.fromtimestamp(int(parts[3]) / 1000, tz=timezone.utc)
        if len(parts) > 3 and parts[3].isdigit()
        else None
    )
    host = parts[4] if len(parts) > 4 else None
    return LockInfo(
        key=key,
        owner=token,
        holds=1,
        ttl=reply[0] / 1000,
        fencing_token=int(parts[0]),
        host=host,
        pid=pid,
        acquired_at=since,
    )


def _parse_shared(key: str, ttl_ms: int, value: str, reply: Any) -> LockInfo:
    """Shared holders, as ``inspect.lua`` answers them: ``*<fencing token> <permits> <writer
    until ms> <waited>`` then `` <hold token> <deadline ms> <fencing token>`` per live holder (the
    Rust crate's readers and permits; this package takes neither)."""
    fields = value[1:].split(" ")
    head, entries = fields[:4], fields[4:]
    if (
        len(head) != 4
        or not all(field.isdigit() for field in head)
        or not entries
        or len(entries) % 3
        or any(len(token) != 32 for token in entries[::3])
    ):
        raise unexpected("inspect", reply)
    permits = int(head[1])
    return LockInfo(
        key=key,
        owner=entries[0],
        holds=len(entries) // 3,
        ttl=ttl_ms / 1000,
        fencing_token=int(head[0]),
        host=None,
        pid=None,
        acquired_at=None,
        mode="read" if permits == 0 else "permits",
        permits=permits or None,
    )
