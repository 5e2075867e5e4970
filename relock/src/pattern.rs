//! Glob patterns over lock keys, as Redis's `SCAN MATCH` reads them, for [`Locker::list`].
//!
//! [`Locker::list`]: crate::Locker::list

use crate::error::Error;
use crate::key::LockKey;

/// A validated key pattern: `*` matches any run of characters, `?` one character, `[abc]`,
/// `[^abc]` and `[a-z]` a character from a set, and `\` makes the next character literal. Like
/// a key, it has 1 to 512 bytes and no braces or control characters.
#[derive(Debug, Clone)]
pub(crate) struct KeyPattern(LockKey);

impl KeyPattern {
    pub(crate) fn new(pattern: &str) -> Result<Self, Error> {
        LockKey::new(pattern).map(Self)
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether `key` matches, by the rules Redis applies to `SCAN MATCH`.
    pub(crate) fn matches(&self, key: &str) -> bool {
        glob(self.as_str().as_bytes(), key.as_bytes())
    }
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((b'[', rest)) => {
            let Some((&first, text_rest)) = text.split_first() else {
                return false;
            };
            let (negate, set) = match rest.split_first() {
                Some((b'^', set)) => (true, set),
                _ => (false, rest),
            };
            let Some(end) = set.iter().position(|&b| b == b']') else {
                // An unclosed `[` is a literal, as Redis reads it.
                return first == b'[' && glob(rest, text_rest);
            };
            let (members, after) = (&set[..end], &set[end + 1..]);
            (in_set(members, first) != negate) && glob(after, text_rest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            text.first() == rest.first() && glob(&rest[1..], &text[1..])
        }
        Some((&literal, rest)) => text.first() == Some(&literal) && glob(rest, &text[1..]),
    }
}

fn in_set(members: &[u8], byte: u8) -> bool {
    let mut i = 0;
    while i < members.len() {
        if i + 2 < members.len() && members[i + 1] == b'-' {
            let (low, high) = (
                members[i].min(members[i + 2]),
                members[i].max(members[i + 2]),
            );
            if (low..=high).contains(&byte) {
                return true;
            }
            i += 3;
        } else {
            if members[i] == byte {
                return true;
            }
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        KeyPattern::new(pattern).unwrap().matches(key)
    }

    #[test]
    fn stars_and_question_marks() {
        assert!(matches("order:*", "order:42"));
        assert!(matches("order:*", "order:"));
        assert!(!matches("order:*", "orders:42"));
        assert!(matches("*:42", "order:42"));
        assert!(matches("order:?2", "order:42"));
        assert!(!matches("order:?", "order:42"));
        assert!(matches("*", "anything at all"));
    }

    #[test]
    fn sets_ranges_negation_and_escapes() {
        assert!(matches("order:[0-9]2", "order:42"));
        assert!(!matches("order:[^0-9]2", "order:42"));
        assert!(matches("order:[abc]", "order:b"));
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axb"));
        assert!(matches("a[b", "a[b"));
    }

    #[test]
    fn patterns_are_validated_like_keys() {
        assert!(KeyPattern::new("").is_err());
        assert!(KeyPattern::new("order:{*}").is_err());
        assert!(KeyPattern::new("order:\n*").is_err());
    }
}
