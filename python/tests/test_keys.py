"""Keys are validated as the Rust crate validates them, before anything is sent."""

import pytest

from relock_redis import InvalidKey, validate_key


@pytest.mark.parametrize("key", ["order:42", "a", "ü" * 256, "x" * 512, "with space", "tab-less"])
def test_valid_keys_pass(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("x" * 513, "too_long"),
        ("ü" * 257, "too_long"),
        ("order:{42}", "brace"),
        ("order:}", "brace"),
        ("a\nb", "control_character"),
        ("a\x00b", "control_character"),
        ("a\x7fb", "control_character"),
        ("a\x85b", "control_character"),
        ("a\ud800b", "not_a_string"),
    ],
)
def test_invalid_keys_name_the_reason(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_key(key)
    assert raised.value.reason == reason


def test_braces_are_reported_before_control_characters() -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_key("\n{")
    assert raised.value.reason == "brace"


def test_a_long_key_is_shortened_in_the_error() -> None:
    with pytest.raises(InvalidKey) as raised:
        validate_key("k" * 600)
    assert len(raised.value.key) == 65
