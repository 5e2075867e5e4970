"""``@locked``: runs an ``async def`` under a lock whose key is built from its arguments."""

from __future__ import annotations

import functools
import inspect
import string
from datetime import timedelta
from typing import Any, Awaitable, Callable, TypeVar, cast

from .errors import RelockError
from .locker import Locker, _global_locker, _scope_locker

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class NoLocker(RelockError):
    """``@locked`` found no locker: none was given, the scope has none, and no global one was
    set with :func:`relock_redis.set_global`."""


def locked(
    pattern: str,
    *,
    locker: Locker | str | None = None,
    wait: float | timedelta | None = None,
    lease: float | timedelta | None = None,
) -> Callable[[F], F]:
    """Runs the decorated ``async def`` under the lock ``pattern`` names.

    Placeholders are ``{param}`` and ``{param.attr…}`` (or ``{param[index]}``) over the
    function's parameters, defaults included::

        @locked("order:{order_id}")
        async def ship(order_id: int) -> None: ...

        @locked("order:{order.id}", wait=2, lease=10, locker="self.locker")
        async def pay(self, order: Order) -> None: ...

    ``locker`` is a :class:`Locker`, or a placeholder path to one among the parameters
    (``"self.locker"``); else the current scope's locker, else the global one. The body runs as
    in :meth:`Locker.run`: nested locks on the key re-enter, and the body is never stepped again
    once the hold is lost (it is cancelled and :class:`~relock_redis.Lost` raised).

    A placeholder naming no parameter, or a function that is not ``async def``, is an error
    when the function is decorated.
    """
    fields = _fields(pattern)

    def decorate(function: F) -> F:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"@locked needs an `async def`, not {function!r}")
        signature = inspect.signature(function)
        for root in fields + ([locker] if isinstance(locker, str) else []):
            name = _root(root)
            if name not in signature.parameters:
                raise ValueError(
                    f"@locked({pattern!r}) on {function.__qualname__}: `{{{root}}}` names no "
                    f"parameter (parameters: {', '.join(signature.parameters)})"
                )

        @functools.wraps(function)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            key = pattern.format_map(bound.arguments)
            return await _locker(locker, bound.arguments).run(
                key, function(*args, **kwargs), wait=wait, lease=lease
            )

        return cast(F, wrapper)

    return decorate


def _fields(pattern: str) -> list[str]:
    fields = []
    for _, field, spec, conversion in string.Formatter().parse(pattern):
        if field is None:
            continue
        if not field or field.isdigit():
            raise ValueError(f"@locked({pattern!r}): placeholders name a parameter, `{{{field}}}` does not")
        fields.append(field)
    return fields


def _root(field: str) -> str:
    for at, char in enumerate(field):
        if char in ".[":
            return field[:at]
    return field


def _locker(locker: Locker | str | None, arguments: dict[str, Any]) -> Locker:
    if isinstance(locker, Locker):
        return locker
    if isinstance(locker, str):
        found = string.Formatter().get_field(locker, (), arguments)[0]
        if not isinstance(found, Locker):
            raise TypeError(f"@locked(locker={locker!r}) is {found!r}, not a Locker")
        return found
    found = _scope_locker() or _global_locker()
    if found is None:
        raise NoLocker(
            "@locked found no locker: pass locker=..., call it inside a lock's scope, or set one "
            "with relock_redis.set_global(locker)"
        )
    return found
