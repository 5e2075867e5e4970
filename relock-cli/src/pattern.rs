//! The glob patterns `relock list` takes, checked before anything is sent: the library reads an
//! unclosed `[` as a literal (as Redis does), which is rarely what an operator typed.

use relock::{InvalidKeyReason, LockKey};

use crate::failure::Failure;

/// Refuses a pattern that could match no lock key or that Redis would read differently from
/// how it looks, with a message that calls it a pattern.
pub(crate) fn check(pattern: &str) -> Result<(), Failure> {
    let invalid = |why: String| Failure::usage(format!("invalid pattern `{pattern}`: {why}"));
    if let Err(relock::Error::InvalidKey { reason, .. }) = LockKey::new(pattern) {
        return Err(invalid(match reason {
            InvalidKeyReason::Empty => "the pattern is empty (`*` matches every lock)".to_owned(),
            InvalidKeyReason::TooLong { len } => format!(
                "the pattern is {len} bytes long, the limit is {}",
                LockKey::MAX_LEN
            ),
            InvalidKeyReason::Brace => {
                "a pattern cannot contain `{` or `}`, as lock keys never do".to_owned()
            }
            InvalidKeyReason::ControlCharacter => {
                "the pattern contains a control character".to_owned()
            }
            other => other.to_string().replace("key", "pattern"),
        }));
    }
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 1 == bytes.len() => {
                return Err(invalid(
                    "it ends with a lone `\\`; write `\\\\` for a backslash".to_owned(),
                ))
            }
            b'\\' => i += 2,
            b'[' => match bytes[i + 1..].iter().position(|&b| b == b']') {
                // `[]` and `[^]` hold no character: `]` right after them closes nothing.
                Some(end) => i += end + 2,
                None => {
                    return Err(invalid(
                        "`[` is not closed by `]`; write `\\[` for a literal `[`".to_owned(),
                    ))
                }
            },
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(pattern: &str) -> String {
        check(pattern).unwrap_err().to_string()
    }

    #[test]
    fn globs_that_redis_reads_as_they_look_pass() {
        for pattern in [
            "*",
            "order:*",
            "order:[0-9]?",
            "order:[^a]",
            "a\\[b",
            "a\\\\",
        ] {
            assert!(check(pattern).is_ok(), "{pattern}");
        }
    }

    #[test]
    fn an_unclosed_bracket_or_a_lone_backslash_is_refused() {
        assert!(message("order:[").contains("`[` is not closed"));
        assert!(message("order:[0-9").contains("`[` is not closed"));
        assert!(message("order:\\").contains("lone `\\`"));
    }

    #[test]
    fn key_rules_are_reported_as_pattern_rules() {
        for pattern in ["", "order:{", "a\u{7}", &"x".repeat(513)] {
            let message = message(pattern);
            assert!(message.starts_with("invalid pattern"), "{message}");
            assert!(!message.contains("key is"), "{message}");
        }
    }
}
