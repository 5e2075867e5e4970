"""relock's exceptions: one small hierarchy mirroring the Rust crate's ``relock::Error``.

Each exception says what the caller should do: retry later (:class:`Timeout`), stop trusting
the work done under the lock (:class:`Lost`), fix the key (:class:`InvalidKey`) or the lease
(:class:`InvalidLease`), restructure the code (:class:`WouldDeadlock`), or check the server
(:class:`BackendError`).
"""

from __future__ import annotations


class RelockError(Exception):
    """The base of every error relock raises."""


class Timeout(RelockError):
    """The lock was held by another owner for the whole wait; try again later.

    ``holder_ttl`` is the holder's remaining lease in seconds when the wait ended, if known.
    """

    def __init__(self, key: str, waited: float, holder_ttl: float | None) -> None:
        self.key = key
        self.waited = waited
        self.holder_ttl = holder_ttl
        ttl = "unknown" if holder_ttl is None else f"{holder_ttl:.3f}s"
        super().__init__(
            f"timed out after {waited:.3f}s waiting for lock `{key}` (holder's lease left: {ttl})"
        )


class Lost(RelockError):
    """The lease ended (expired, or was force-released) before the holder released it.

    Work done under the lock after that point was not protected; the fencing token is what lets
    the resource reject such late writes.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"lock `{key}` was lost: its lease ended before it was released")


class InvalidKey(RelockError, ValueError):
    """The key cannot be used as a lock key; nothing was sent to the server.

    ``reason`` is one of ``"empty"``, ``"too_long"``, ``"brace"``, ``"control_character"``,
    ``"not_a_string"`` (the Rust crate's ``InvalidKeyReason``); the message says it in words.
    """

    def __init__(self, key: str, reason: str, message: str) -> None:
        self.key = key if len(key) <= 64 else key[:64] + "…"
        self.reason = reason
        super().__init__(f"invalid lock key `{self.key}`: {message}")


class InvalidLease(RelockError, ValueError):
    """The lease asked for is outside what relock can keep (10 ms to 30 days); nothing was sent."""

    def __init__(self, lease: float, minimum: float, maximum: float) -> None:
        self.lease = lease
        super().__init__(
            f"lease of {lease}s is out of range: it must be between {minimum}s and {maximum}s"
        )


class WouldDeadlock(RelockError):
    """The task waited for a lock it holds itself through a guard taken outside any scope.

    Reported when the wait ends, instead of :class:`Timeout`. Take the outer lock with
    ``async with locker.lock(...)`` (or ``@locked``) so that the nested call re-enters it.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"waiting for lock `{key}`, which this task holds through a guard taken outside any "
            "scope; take the outer lock with `async with locker.lock(...)` or `@locked` so that "
            "nested calls re-enter it"
        )


class BackendError(RelockError):
    """Redis failed, could not be reached, or answered something relock did not expect.

    The underlying ``redis`` exception, if any, is the ``__cause__``.
    """
