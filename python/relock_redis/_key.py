"""Lock keys: validated exactly as the Rust crate validates them."""

from __future__ import annotations

import re

from .errors import InvalidKey

MAX_LEN = 512
"""The longest key accepted, in bytes of UTF-8."""

# Unicode control characters (category Cc): C0, DEL and C1.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def validate_key(key: object) -> str:
    """Returns ``key`` if it is a usable lock key, else raises :class:`InvalidKey`.

    A key is 1 to 512 bytes of UTF-8 with no control characters and no ``{`` or ``}`` (the key
    is wrapped in a Redis Cluster hash tag).
    """
    if not isinstance(key, str):
        raise InvalidKey(repr(key), "not_a_string", f"a key is a str, not {type(key).__name__}")
    if not key:
        raise InvalidKey(key, "empty", "key is empty")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise InvalidKey(key, "not_a_string", "key is not valid UTF-8 (a lone surrogate)") from None
    if size > MAX_LEN:
        raise InvalidKey(key, "too_long", f"key is {size} bytes long, more than {MAX_LEN}")
    if "{" in key or "}" in key:
        raise InvalidKey(key, "brace", "key contains `{` or `}`")
    if _CONTROL.search(key):
        raise InvalidKey(key, "control_character", "key contains a control character")
    return key
